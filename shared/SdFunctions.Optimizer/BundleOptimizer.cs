using System.Reflection;
using System.Security.Cryptography;
using System.Text.Json;
using Onnx;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;
using SdFunctions.Optimizer.Quantization;
using SdFunctions.Optimizer.TokenMerging;

namespace SdFunctions.Optimizer;

/// <summary>What <c>sdf optimize</c> is asked to do.</summary>
public sealed record OptimizeOptions
{
    public required string ModelDirectory { get; init; }
    public required string OutputDirectory { get; init; }
    public double TomeRatio { get; init; }

    /// <summary>tomesd's other knobs: dst grid, how far down the UNet to merge, which sub-layers, random dst seed.</summary>
    public int TomeSx { get; init; } = 2;
    public int TomeSy { get; init; } = 2;
    public int TomeMaxDownsample { get; init; } = 1;
    public IReadOnlyList<string> TomeMerge { get; init; } = ["attn"];
    public int? TomeSeed { get; init; }
    public int? Width { get; init; }
    public int? Height { get; init; }
    /// <summary>The UNet's static batch: 2 runs a guided step in one call, 1 suits LCM; null = 1 for guidance-distilled (LCM) UNets, else 2.</summary>
    public int? Batch { get; init; }

    /// <summary>Replace the exported attention subgraphs with ORT's fused MultiHeadAttention.</summary>
    public bool FuseAttention { get; init; }

    /// <summary>INT8 QDQ quantization of the UNet; null = keep it float.</summary>
    public QuantizationOptions? Quantization { get; init; }

    /// <summary>Also quantize the VAE decoder to INT8 (needs <see cref="Quantization"/>: it calibrates on the same run).</summary>
    public bool QuantizeVaeDecoder { get; init; }

    /// <summary>Store the text encoder's weights as int8 (weight-only: no calibration, activations stay float).</summary>
    public bool QuantizeTextEncoder { get; init; }

    /// <summary>Also write DeepCache's full and shallow UNet graphs (over the same weights), cut at <see cref="DeepCacheBranch"/>.</summary>
    public bool DeepCache { get; init; }

    /// <summary>DeepCache's cache_branch_id: 0 caches the most (only the outermost resnet and attention run on a cached step).</summary>
    public int DeepCacheBranch { get; init; }

    /// <summary>
    /// Measure the bundle against its source on the calibration prompts (UNet error per timestep range, end-to-end PSNR/SSIM, the
    /// judge where it applies) and write the figures into the manifest (<see cref="FidelityCheck"/>).
    /// </summary>
    public bool Fidelity { get; init; } = true;

    /// <summary>Fail (and write nothing) when the median end-to-end PSNR against the source is below this many dB; needs <see cref="Fidelity"/>.</summary>
    public double? MinPsnr { get; init; }

    /// <summary>Prompts to calibrate on (one per line); null = the model card's example prompts, else <see cref="Calibration.DefaultPrompts"/>.</summary>
    public string? CalibrationFile { get; init; }

    /// <summary>Denoising steps per calibration prompt (the bundle's default scheduler); null = the model card's steps, else 10.</summary>
    public int? CalibrationSteps { get; init; }

    /// <summary>What <see cref="CalibrationSteps"/> comes to for <paramref name="bundle"/>.</summary>
    public int CalibrationStepsFor(ModelBundle bundle) => CalibrationSteps ?? bundle.Card?.Steps ?? 10;

    /// <summary>
    /// Also compile every model for this machine into the bundle's <c>compiled/</c> folder (ORT's optimized graphs with
    /// the default session settings), so a matching instance's first load skips graph optimization.
    /// </summary>
    public bool Compile { get; init; }
}

/// <summary>An optimized bundle failed the fidelity gate (<see cref="OptimizeOptions.MinPsnr"/>).</summary>
public sealed class FidelityException(string message) : InvalidOperationException(message);

/// <summary>The manifest written beside an optimized bundle: where it came from and what was done.</summary>
public sealed record OptimizeManifest
{
    public required string Tool { get; init; }
    public required string ToolVersion { get; init; }
    public required DateTimeOffset CreatedAt { get; init; }
    public required string Source { get; init; }
    public required IReadOnlyDictionary<string, string> SourceUnetSha256 { get; init; }
    public required OptimizeOptions Options { get; init; }
    public required IReadOnlyDictionary<string, long> StaticDims { get; init; }
    public required IReadOnlyList<TomeBlock> TokenMerging { get; init; }
    public required int ZeroAttentionAddsRemoved { get; init; }
    public required int FusedAttentions { get; init; }
    public required long UnetBytesBefore { get; init; }
    public required long UnetBytesAfter { get; init; }

    /// <summary>The UNet's weights alone (initializer values, no graph, no padding), before and after.</summary>
    public required long UnetWeightBytesBefore { get; init; }
    public required long UnetWeightBytesAfter { get; init; }
    public QuantizationReport? Quantization { get; init; }

    /// <summary>The VAE decoder's quantized nodes by type (null: left float).</summary>
    public IReadOnlyDictionary<string, int>? VaeDecoderQuantizedNodes { get; init; }

    /// <summary>The text encoder's int8 weights: nodes by type and weight bytes before and after (null: left float).</summary>
    public TextEncoderQuantizer.Result? TextEncoderQuantization { get; init; }

    /// <summary>The DeepCache cut (null: none written).</summary>
    public DeepCacheSplitter.Result? DeepCache { get; init; }

    /// <summary>The bundle measured against its source (null: not checked, <c>--no-fidelity</c>).</summary>
    public FidelityReport? Fidelity { get; init; }

    /// <summary>The compiled graphs in the bundle and what they are valid for (null: not compiled).</summary>
    public CompiledGraphs? Compiled { get; init; }

    public sealed record CompiledGraphs(string OrtVersion, string CpuFeatures, IReadOnlyList<string> Entries);

    public sealed record TomeBlock(string Block, int Tokens, int Merged);

    /// <summary>How the UNet was quantized and what ONNX Runtime runs for it (op counts of its optimized graph).</summary>
    public sealed record QuantizationReport(
        string Format, string Preset, string WeightScheme, string ActivationScheme, string RangeMethod,
        int CalibrationPrompts, int CalibrationSteps, int CalibrationInputs, int CalibratedTensors,
        IReadOnlyDictionary<string, int> QuantizedNodes, IReadOnlyDictionary<string, int> IntegerKernels,
        IReadOnlyDictionary<string, int> FloatKernelsLeft, IReadOnlyList<string>? KeepFloat = null, MixedPrecisionChoice? MixedPrecision = null);
    public const string FileName = "sdfunctions-optimize.json";

    /// <summary>How the manifest is written and read: web names, indented, ∞ dB (identical pictures) as "Infinity".</summary>
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The bundle an optimized bundle in <paramref name="directory"/> was made from (null: it has no manifest).</summary>
    public static string? SourceOf(string directory)
    {
        string path = Path.Combine(directory, FileName);
        if (!File.Exists(path)) return null;
        using var manifest = JsonDocument.Parse(File.ReadAllBytes(path));
        return manifest.RootElement.TryGetProperty("source", out var source) ? source.GetString() : null;
    }
}

/// <summary>
/// Writes an optimized copy of a bundle: every component (taesd_decoder/ included) copied as it is except <c>unet/</c>, whose graph is
/// rewritten (Token Merging, the attention's zero additions removed, static shape) with its external weight
/// files carried along, plus a manifest.
/// </summary>
public static class BundleOptimizer
{
    public static async Task<OptimizeManifest> OptimizeAsync(OptimizeOptions options, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        var bundle = ModelBundle.Open(options.ModelDirectory);
        if (options.TomeRatio is < 0 or >= 1) throw new ArgumentException($"--tome-ratio must be in [0, 1); got {options.TomeRatio}.");
        if (options.TomeSx < 1 || options.TomeSy < 1) throw new ArgumentException($"--tome-sx and --tome-sy must be at least 1; got {options.TomeSx}, {options.TomeSy}.");
        if (options.TomeMaxDownsample is not (1 or 2 or 4 or 8)) throw new ArgumentException($"--tome-max-downsample must be 1, 2, 4 or 8; got {options.TomeMaxDownsample}.");
        if (options.TomeMerge.FirstOrDefault(m => m is not ("attn" or "crossattn" or "mlp")) is { } unknown)
            throw new ArgumentException($"--tome-merge: '{unknown}' is not one of attn, crossattn, mlp.");
        int calibrationSteps = options.CalibrationStepsFor(bundle);
        if (calibrationSteps is < 1 or > 150) throw new ArgumentException($"--calibration-steps must be in 1–150; got {calibrationSteps}.");
        var prompts = options.CalibrationFile is { } promptFile ? Calibration.ReadPrompts(promptFile) : Calibration.DefaultPromptsFor(bundle);
        if (options.MinPsnr is { } minPsnr && (!options.Fidelity || !(minPsnr > 0)))
            throw new ArgumentException(options.Fidelity ? $"--min-psnr must be a positive number of dB; got {minPsnr}." : "--min-psnr needs the fidelity check (drop --no-fidelity).");
        if (options.Quantization is { Ranges: RangeMethod.Percentile, Percentile: var pct } && !(pct > 50 && pct < 100))
            throw new ArgumentException($"--quantize-percentile must be above 50 and below 100; got {pct}.");
        if (options.Quantization?.ErrorBudget is { } errorBudget && !(errorBudget > 0 && errorBudget < 1))
            throw new ArgumentException($"--quantize-error-budget must be above 0 and below 1 (a relative L2 error, e.g. 0.05); got {errorBudget}.");
        if (options.QuantizeVaeDecoder && options.Quantization is null) throw new ArgumentException("--quantize-vae needs --quantize int8 (both calibrate on one run).");
        if (options.DeepCacheBranch < 0 || (options.DeepCacheBranch != 0 && !options.DeepCache))
            throw new ArgumentException($"--deep-cache-branch needs --deep-cache and must be 0 or more; got {options.DeepCacheBranch}.");
        if (options.Batch is not (null or 1 or 2)) throw new ArgumentException($"--batch must be 1 or 2; got {options.Batch}.");
        int batch = options.Batch ?? (bundle.GuidanceDistilled ? 1 : 2);
        int width = options.Width ?? bundle.DefaultWidth, height = options.Height ?? bundle.DefaultHeight;
        int multiple = bundle.VaeScaleFactor * 8;
        if (width <= 0 || height <= 0 || width % multiple != 0 || height % multiple != 0)
            throw new ArgumentException($"Width and height must be positive multiples of {multiple}; got {width}×{height}.");
        string destination = Path.GetFullPath(options.OutputDirectory);
        if (Directory.Exists(destination) && Directory.EnumerateFileSystemEntries(destination).Any())
            throw new IOException($"--out: {destination} exists and is not empty; choose a new folder for the optimized bundle.");
        if (destination.StartsWith(bundle.Directory + Path.DirectorySeparatorChar, StringComparison.Ordinal) || destination == bundle.Directory)
            throw new IOException($"--out: {destination} is inside the source bundle; choose a folder outside it.");

        // The cut is checked on the source graph before any work (the rewrites keep the names it is found by).
        if (options.DeepCache) DeepCacheSplitter.FeatureTensor((await ModelFiles.ReadAsync(bundle.Unet.Path, ct)).Graph, options.DeepCacheBranch);

        // Written beside the destination and moved into place at the end: a canceled or failed run leaves no half-written bundle.
        string output = $"{destination}.partial-{Guid.NewGuid().ToString("N")[..8]}";
        try
        {
            string sourceUnetDir = Path.GetDirectoryName(bundle.Unet.Path)!;
            progress?.Report("copying the other components");
            foreach (string file in Directory.EnumerateFiles(bundle.Directory, "*", SearchOption.AllDirectories))
            {
                ct.ThrowIfCancellationRequested();
                string relative = Path.GetRelativePath(bundle.Directory, file);
                if (relative.StartsWith("unet" + Path.DirectorySeparatorChar, StringComparison.Ordinal) || relative == OptimizeManifest.FileName
                    || relative.StartsWith(OnnxSessionFactory.CompiledFolder + Path.DirectorySeparatorChar, StringComparison.Ordinal)) continue; // rebuilt, not copied
                string target = Path.Combine(output, relative);
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.Copy(file, target);
            }

            progress?.Report("hashing the source UNet");
            var hashes = new Dictionary<string, string>();
            foreach (string file in Directory.EnumerateFiles(sourceUnetDir).Order(StringComparer.Ordinal))
            {
                await using var stream = File.OpenRead(file);
                hashes[Path.GetFileName(file)] = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, ct));
            }

            progress?.Report("rewriting the UNet graph");
            var model = await ModelFiles.ReadAsync(bundle.Unet.Path, ct);
            long weightBytesBefore = ModelFiles.InitializerBytes(model);
            int latentH = height / bundle.VaeScaleFactor, latentW = width / bundle.VaeScaleFactor;
            var blocks = new List<OptimizeManifest.TomeBlock>();
            if (options.TomeRatio > 0)
            {
                var result = TokenMergingRewriter.Apply(model, new TokenMergingOptions
                {
                    Ratio = options.TomeRatio, Batch = batch, LatentHeight = latentH, LatentWidth = latentW,
                    Sx = options.TomeSx, Sy = options.TomeSy, MaxDownsample = options.TomeMaxDownsample, RandomDstSeed = options.TomeSeed,
                    MergeAttn = options.TomeMerge.Contains("attn"), MergeCrossAttn = options.TomeMerge.Contains("crossattn"), MergeMlp = options.TomeMerge.Contains("mlp"),
                });
                blocks.AddRange(result.Blocks.Select(b => new OptimizeManifest.TomeBlock(b.Block, b.Tokens, b.Merged)));
                progress?.Report($"token merging: {blocks.Count} blocks, {blocks.Sum(b => b.Merged)} tokens merged per step");
            }
            int zeroAdds = ZeroAddRemoval.Apply(model.Graph);
            progress?.Report($"attention: removed {zeroAdds} additions of constant zeros (baddbmm beta=0)");
            int fusedAttentions = options.FuseAttention ? AttentionFusion.Apply(model) : 0;
            if (options.FuseAttention)
                progress?.Report($"attention: {fusedAttentions} attentions fused into MultiHeadAttention");
            var dims = StaticDims.ForUnet(model.Graph, batch, latentH, latentW, bundle.Tokenizer.MaxLength);
            StaticDims.Apply(model.Graph, dims);

            string unetOut = Path.Combine(output, "unet");
            var weightFiles = ModelFiles.ExternalFiles(model);
            Directory.CreateDirectory(unetOut);
            foreach (string file in Directory.EnumerateFiles(sourceUnetDir))
                if (Path.GetFileName(file) is var name && name != "model.onnx" && !weightFiles.Contains(name))
                    File.Copy(file, Path.Combine(unetOut, name)); // config.json and the like
            await ModelFiles.WriteAsync(model, sourceUnetDir, unetOut, ct);

            TextEncoderQuantizer.Result? textEncoder = null;
            if (options.QuantizeTextEncoder)
            {
                // Before calibration, so that the UNet is calibrated on the embeddings it will be given.
                textEncoder = await TextEncoderQuantizer.QuantizeAsync(Path.Combine(output, Path.GetRelativePath(bundle.Directory, Path.GetDirectoryName(bundle.TextEncoder.Path)!)), ct);
                progress?.Report($"text encoder: int8 weights, {textEncoder.WeightBytesBefore / 1e6:F1} MB → {textEncoder.WeightBytesAfter / 1e6:F1} MB");
            }

            OptimizeManifest.QuantizationReport? quantization = null;
            IReadOnlyDictionary<string, int>? vaeQuantized = null;
            if (options.Quantization is { } q)
            {
                var session = new SessionSettings();
                var inputs = await Calibration.CollectInputsAsync(output, prompts, calibrationSteps, batch, session, progress, ct);
                quantization = await QuantizeUNetAsync(model, unetOut, q, prompts, calibrationSteps, inputs.UNet, session, progress, ct);
                if (options.QuantizeVaeDecoder)
                    vaeQuantized = await VaeDecoderQuantizer.QuantizeAsync(Path.Combine(output, "vae_decoder"), inputs.DecoderLatents, latentH, latentW, q, session, progress, ct);
            }

            DeepCacheSplitter.Result? deepCache = null;
            if (options.DeepCache)
            {
                progress?.Report($"DeepCache: cutting the UNet at branch {options.DeepCacheBranch}");
                deepCache = await DeepCacheSplitter.WriteAsync(unetOut, options.DeepCacheBranch, new SessionSettings(), ct);
                progress?.Report($"DeepCache: feature {deepCache.Feature} [{string.Join(", ", deepCache.FeatureShape)}]; shallow graph {deepCache.ShallowNodes} of {deepCache.FullNodes} nodes");
            }

            OptimizeManifest.CompiledGraphs? compiled = null;
            if (options.Compile)
            {
                progress?.Report("compiling the models for this machine (ONNX Runtime graph optimization)");
                string cache = Path.Combine(output, OnnxSessionFactory.CompiledFolder);
                // Once per decoder (a pipeline loads its default one); the other models come from the cache the first load filled.
                foreach (var decoder in bundle.Decoders)
                    using (await StableDiffusionPipeline.LoadAsync(output, new PipelineOptions
                           { WarmUp = false, DefaultDecoder = decoder.Name, Session = new SessionSettings { OptimizedModelCacheDirectory = cache } }, cancellationToken: ct)) { }
                compiled = new OptimizeManifest.CompiledGraphs(OnnxSessionFactory.OrtVersion, CpuInfo.FeatureSummary,
                    Directory.GetDirectories(cache).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList()!);
            }

            FidelityReport? fidelity = null;
            if (options.Fidelity)
            {
                fidelity = await FidelityCheck.MeasureAsync(bundle.Directory, output, prompts, calibrationSteps, batch, progress, ct);
                progress?.Report($"fidelity: PSNR against the source median {fidelity.Psnr.Median:F1} dB (worst {fidelity.Psnr.Min:F1}), SSIM mean {fidelity.Ssim.Mean:F3}; " +
                    $"UNet relative L2 {string.Join(", ", fidelity.UNetError.Select(e => $"t {e.From}–{e.To}: {e.MeanRelativeL2:P1}"))}" +
                    (fidelity.SourceAccuracy is { } before ? $"; judge {before.Right}/{before.Total} → {fidelity.OptimizedAccuracy!.Right}/{fidelity.OptimizedAccuracy.Total}" : ""));
                if (options.MinPsnr is { } floor && !(fidelity.Psnr.Median >= floor))
                    throw new FidelityException($"The optimized bundle drifts too far from its source: median PSNR {fidelity.Psnr.Median:F1} dB over {prompts.Count} calibration prompts is below --min-psnr {floor:0.#}; nothing was written.");
            }

            var manifest = new OptimizeManifest
            {
                Tool = "sdf optimize",
                ToolVersion = typeof(BundleOptimizer).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown",
                CreatedAt = DateTimeOffset.UtcNow,
                Source = bundle.Directory,
                SourceUnetSha256 = hashes,
                Options = options with { Width = width, Height = height, Batch = batch, CalibrationSteps = calibrationSteps },
                StaticDims = dims,
                TokenMerging = blocks,
                ZeroAttentionAddsRemoved = zeroAdds,
                FusedAttentions = fusedAttentions,
                UnetBytesBefore = DirectorySize(sourceUnetDir),
                UnetBytesAfter = DirectorySize(unetOut),
                UnetWeightBytesBefore = weightBytesBefore,
                UnetWeightBytesAfter = ModelFiles.InitializerBytes(model),
                Quantization = quantization,
                VaeDecoderQuantizedNodes = vaeQuantized,
                TextEncoderQuantization = textEncoder,
                DeepCache = deepCache,
                Compiled = compiled,
                Fidelity = fidelity,
            };
            // What the API side checks requests against without downloading the model: read from the bundle as written.
            ModelProfile.Read(ModelBundle.Open(output)).Write(output);
            await File.WriteAllTextAsync(Path.Combine(output, OptimizeManifest.FileName),
                JsonSerializer.Serialize(manifest, OptimizeManifest.Json), ct);
            if (Directory.Exists(destination)) Directory.Delete(destination); // empty: checked above
            Directory.Move(output, destination);
            progress?.Report($"wrote {destination}");
            return manifest;
        }
        finally
        {
            if (Directory.Exists(output)) Directory.Delete(output, recursive: true);
        }
    }

    /// <summary>
    /// Measures ranges on the float UNet just written (so they are those of the rewritten graph, Token Merging included)
    /// with the inputs the float pipeline fed it, rewrites it in QDQ form and reports the integer kernels ONNX Runtime fuses from it.
    /// </summary>
    private static async Task<OptimizeManifest.QuantizationReport> QuantizeUNetAsync(ModelProto model, string unetDir,
        QuantizationOptions quantization, IReadOnlyList<string> prompts, int calibrationSteps, IReadOnlyList<UNetInputs> inputs, SessionSettings session,
        IProgress<string>? progress, CancellationToken ct)
    {
        var plan = QdqQuantizer.Plan(model.Graph, quantization);
        if (plan.Targets.Count == 0) throw new InvalidOperationException("The UNet has no Conv or MatMul with initializer weights to quantize.");
        var ranges = Calibration.MeasureRanges(model, unetDir, plan.Tensors, inputs, session, progress, ct, quantization.ClipPercentile);

        MixedPrecisionChoice? mixed = null;
        if (quantization.ErrorBudget is { } budget)
        {
            // A few calls spread over the timesteps: the error of every trial is measured on the same ones.
            var sample = Enumerable.Range(0, Math.Min(SensitivityInputs, inputs.Count)).Select(i => inputs[i * inputs.Count / Math.Min(SensitivityInputs, inputs.Count)]).ToList();
            mixed = SensitivityAnalysis.Choose(model, unetDir, quantization, ranges, sample, budget, session, progress, ct);
            quantization = quantization with { KeepFloat = [.. quantization.KeepFloat, .. mixed.KeptFloat] };
            plan = QdqQuantizer.Plan(model.Graph, quantization);
            progress?.Report($"mixed precision: {mixed.KeptFloat.Count} of {mixed.Groups.Count} layer groups kept float ({string.Join(", ", mixed.KeptFloat)}); error {mixed.FullError:P2} → {mixed.FinalError:P2}");
        }
        progress?.Report($"quantizing {plan.Targets.Count} nodes ({quantization.Preset})");
        var quantized = QdqQuantizer.Apply(model, plan, ranges, unetDir);
        await ModelFiles.WriteAsync(model, unetDir, unetDir, ct);

        progress?.Report("checking which kernels ONNX Runtime runs");
        var ops = await KernelReport.CountOpsAsync(Path.Combine(unetDir, "model.onnx"), session, ct);
        var integer = ops.Where(o => KernelReport.IntegerOps.Contains(o.Key)).ToDictionary();
        var floatLeft = ops.Where(o => o.Key is "Conv" or "FusedConv" or "MatMul" or "FusedMatMul" or "Gemm" or "QuantizeLinear" or "DequantizeLinear").ToDictionary();
        progress?.Report($"integer kernels: {string.Join(", ", integer.Select(o => $"{o.Key} {o.Value}"))}; float left: {string.Join(", ", floatLeft.Select(o => $"{o.Key} {o.Value}"))}");
        return new OptimizeManifest.QuantizationReport(
            Format: "QDQ", Preset: quantization.Preset.ToString().ToLowerInvariant(),
            WeightScheme: "int8 symmetric per output channel", ActivationScheme: "uint8 asymmetric per tensor",
            RangeMethod: quantization.ClipPercentile is { } clip ? $"percentile {clip}" : "min-max",
            CalibrationPrompts: prompts.Count, CalibrationSteps: calibrationSteps, CalibrationInputs: inputs.Count,
            CalibratedTensors: plan.Tensors.Count, QuantizedNodes: quantized, IntegerKernels: integer, FloatKernelsLeft: floatLeft, KeepFloat: quantization.KeepFloat,
            MixedPrecision: mixed);
    }

    /// <summary>Calibration inputs sensitivity-guided mixed precision measures each trial on.</summary>
    private const int SensitivityInputs = 12;

    private static long DirectorySize(string dir) => Directory.EnumerateFiles(dir).Sum(f => new FileInfo(f).Length);
}
