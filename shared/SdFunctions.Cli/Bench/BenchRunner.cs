using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Inference.Runtime;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;

namespace SdFunctions.Cli.Bench;

/// <summary>What <c>sdf bench</c> is asked to do.</summary>
public sealed record BenchOptions
{
    /// <summary>Where the random-weight bundles, optimized variants, caches and probe files live (reused across runs).</summary>
    public required string WorkDirectory { get; init; }
    public string GraphsDirectory { get; init; } = DefaultGraphsDirectory;
    public static readonly string DefaultGraphsDirectory = Path.Combine("..", "shared", "fixtures", "sd15-graphs");

    /// <summary>Tokenizer, scheduler and config files for the bundle made from the graphs.</summary>
    public string TemplateBundle { get; init; } = Path.Combine("..", "shared", "fixtures", "tiny-sd");

    /// <summary>The trained model every row's quality is measured on (<see cref="BenchQuality"/>): the bundled tiny-shapes.</summary>
    public string QualityBundle { get; init; } = CliApp.BundledModel;

    /// <summary>The trained LCM model the few-step rows' quality is measured on (tiny-shapes distilled); missing: those rows get none.</summary>
    public string QualityFewStepBundle { get; init; } = Path.Combine("..", "shared", "fixtures", "tiny-shapes-lcm");

    /// <summary>Caption × seed pairs per quality figure; 0 = measure no quality.</summary>
    public int QualityPairs { get; init; } = 100;

    /// <summary>Use this bundle as the FP32 variant instead of making one from the graphs (e.g. the tiny bundle).</summary>
    public string? Fp32Bundle { get; init; }
    public IReadOnlyList<string> Variants { get; init; } = BenchVariant.All.Select(v => v.Name).ToList();
    public int Repeats { get; init; } = 3;
    public bool Findings { get; init; } = true;

    /// <summary>Which variants get the 50-step PNDM generation: fastest (by UNet step), all or none.</summary>
    public string E2e50 { get; init; } = "fastest";

    /// <summary>Also time whole 512² images: the seed's recipe, 20 DPM++ steps, and LCM 4 steps on a batch-1 UNet with each decoder.</summary>
    public bool TimeToImage { get; init; } = true;

    /// <summary>Which time-to-image recipes to run, by key (a–f; see <see cref="ImageRecipe.All"/>).</summary>
    public IReadOnlyList<string> Recipes { get; init; } = ImageRecipe.All.Select(r => r.Key).ToList();

    /// <summary>DeepCache intervals (&gt; 1) to time the multi-step recipes at, beside their plain row (interval 1); empty: none.</summary>
    public IReadOnlyList<int> DeepCacheIntervals { get; init; } = [2, 3, 5];
    public int CalibrationPrompts { get; init; } = 2;
    public int CalibrationSteps { get; init; } = 2;
    public string MarkdownPath { get; init; } = "BENCHMARKS.md";
    public string JsonPath { get; init; } = "BENCHMARKS.json";
    public string Command { get; init; } = "sdf bench";
}

/// <summary>One UNet variant: FP32 as exported, or what <c>sdf optimize</c> makes of it (at a static batch).</summary>
public sealed record BenchVariant(string Name, string Description, bool Int8, double TomeRatio, int Batch = 2, bool DeepCache = false, bool Int8TextEncoder = false)
{
    public static readonly IReadOnlyList<BenchVariant> All =
    [
        new("fp32", "FP32 as exported (ORT graph optimizations only)", false, 0),
        new("int8", "INT8 QDQ (mixed) + fused attention", true, 0),
        // As production ships it: with the DeepCache graphs (the full graph is the UNet, plus the small shallow one) and int8 text encoder weights.
        new("int8_tome0.4", "INT8 QDQ (mixed) + fused attention + ToMe 0.4 + DeepCache graphs; text encoder int8 weights", true, 0.4, DeepCache: true, Int8TextEncoder: true),
        new("int8_tome0.5", "INT8 QDQ (mixed) + fused attention + ToMe 0.5", true, 0.5),
    ];

    /// <summary>The variant the service runs in production, and the one the findings are measured on.</summary>
    public const string Production = "int8_tome0.4";

    /// <summary>The production recipe at batch 1, for few-step requests without classifier-free guidance (LCM), with TAESD beside the VAE.</summary>
    public static readonly BenchVariant FewStep = new("int8_tome0.4_b1", "INT8 QDQ (mixed) + fused attention + ToMe 0.4, batch 1, + TAESD; text encoder int8 weights", true, 0.4, Batch: 1, Int8TextEncoder: true);
}

/// <summary>One way to make an image, timed whole (encode + steps + decode) after the service's load and warm-up.</summary>
/// <param name="MemoryBudget">The service's Model:MemoryBudget for this row (null: none).</param>
public sealed record ImageRecipe(string Label, string Variant, string Scheduler, int Steps, double GuidanceScale, string Decoder, string? MemoryBudget = null)
{
    /// <summary>The letter in the label: what <c>--recipes</c> takes.</summary>
    public string Key => Label[1..Label.IndexOf(')')];

    /// <summary>Many steps with guidance on the production UNet, as the service runs without a budget: the recipes DeepCache is timed on.</summary>
    public bool IsMultiStep => Variant == BenchVariant.Production && MemoryBudget is null;

    public static IReadOnlyList<ImageRecipe> All =>
    [
        new("(a) the seed's recipe", BenchVariant.Production, "pndm", 50, 7.5, "full"),
        new("(b) 20 DPM++ steps", BenchVariant.Production, "dpmpp-2m", 20, 7.5, "full"),
        new("(c) LCM 4 steps, batch 1", BenchVariant.FewStep.Name, "lcm", 4, 1.0, "full"),
        new("(d) = (c) with TAESD", BenchVariant.FewStep.Name, "lcm", 4, 1.0, "tiny"),
        new("(e) = (b) in 2.5 GB", BenchVariant.Production, "dpmpp-2m", 20, 7.5, "full", "2.5GB"),
        new("(f) = (d) in 1.5 GB", BenchVariant.FewStep.Name, "lcm", 4, 1.0, "tiny", "1.5GB"),
    ];
}

/// <summary>
/// The real-size benchmark: makes the FP32 bundle from the weightless graphs, optimizes it into the INT8 variants with
/// <see cref="BundleOptimizer"/>, measures each in child processes (<see cref="ProbeProcess"/>) and writes the report.
/// </summary>
public static class BenchRunner
{
    /// <summary>Measured on this machine by the fixtures' README (Debian PyTorch 1.13 + OpenBLAS, 2 threads): one SD 1.5 UNet step.</summary>
    public const double PyTorchFp32StepSeconds = 47.7;

    public static async Task<BenchReport> RunAsync(BenchOptions options, IProgress<string> progress, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        var unknown = options.Variants.Where(v => BenchVariant.All.All(k => k.Name != v)).ToList();
        if (unknown.Count > 0) throw new ArgumentException($"--variants: unknown {string.Join(", ", unknown)}; choose from {string.Join(", ", BenchVariant.All.Select(v => v.Name))}.");
        if (options.Repeats < 1) throw new ArgumentException($"--repeats must be at least 1; got {options.Repeats}.");
        if (options.E2e50 is not ("fastest" or "all" or "none")) throw new ArgumentException($"--e2e50 must be fastest, all or none; got {options.E2e50}.");
        var unknownRecipes = options.Recipes.Where(r => ImageRecipe.All.All(k => k.Key != r)).ToList();
        if (unknownRecipes.Count > 0) throw new ArgumentException($"--recipes: unknown {string.Join(", ", unknownRecipes)}; choose from {string.Join(", ", ImageRecipe.All.Select(r => r.Key))}.");
        var badIntervals = options.DeepCacheIntervals.Where(i => i is < 2 or > DeepCacheSchedule.MaxInterval).ToList();
        if (badIntervals.Count > 0)
            throw new ArgumentException($"--deep-cache-intervals must be from 2 to {DeepCacheSchedule.MaxInterval} (interval 1 is the plain row); got {string.Join(", ", badIntervals)}.");
        var variants = BenchVariant.All.Where(v => options.Variants.Contains(v.Name)).ToList();
        string work = Path.GetFullPath(options.WorkDirectory);
        Directory.CreateDirectory(work);

        string fp32 = options.Fp32Bundle is { } given ? Path.GetFullPath(given) : Path.Combine(work, "sd15-fp32");
        if (options.Fp32Bundle is null)
        {
            var watch = Stopwatch.StartNew();
            bool made = await RandomWeightBundle.EnsureAsync(options.GraphsDirectory, options.TemplateBundle, fp32, progress, ct);
            progress.Report(made ? $"made the FP32 bundle from the graphs in {watch.Elapsed.TotalSeconds:F0} s" : $"reusing {fp32}");
        }
        var bundles = new Dictionary<string, string>();
        foreach (var variant in variants)
            bundles[variant.Name] = variant.Int8 ? await EnsureVariantAsync(fp32, work, variant, options, progress, ct) : fp32;

        var probes = new ProbeProcess(Path.Combine(work, "probes"), progress);
        string CacheOf(string variant) => Path.Combine(work, "cache", variant); // each variant's optimized graphs
        var results = new Dictionary<string, VariantResult>();
        foreach (var variant in variants)
        {
            string cache = CacheOf(variant.Name);
            if (Directory.Exists(cache)) Directory.Delete(cache, recursive: true); // cold: nothing optimized yet
            var cold = await probes.RunAsync($"{variant.Name}-load-cold", new ProbeRequest { Kind = ProbeKind.Load, Bundle = bundles[variant.Name], Cache = cache }, ct);
            var warm = await probes.RunAsync($"{variant.Name}-pipeline", new ProbeRequest
            {
                Kind = ProbeKind.Pipeline, Bundle = bundles[variant.Name], Cache = cache, Repeats = options.Repeats, E2e50 = options.E2e50 == "all",
            }, ct);
            results[variant.Name] = VariantResult.From(variant, cold, warm, SizesOnDisk(bundles[variant.Name]));
            progress.Report($"{variant.Name}: UNet step {results[variant.Name].UnetStepS:F2} s, peak RSS {warm.PeakRssBytes / 1e9:F2} GB");
        }

        if (options.E2e50 == "fastest" && results.Count > 0)
        {
            string fastest = results.MinBy(r => r.Value.UnetStepS).Key;
            var e2e = await probes.RunAsync($"{fastest}-e2e50", new ProbeRequest
            {
                Kind = ProbeKind.Pipeline, Bundle = bundles[fastest], Cache = CacheOf(fastest), Repeats = 1, E2e20 = false, E2e50 = true,
            }, ct);
            results[fastest] = results[fastest] with { E2e50PndmS = e2e.PipelinePart.E2e50PndmS };
        }
        if (results.TryGetValue("fp32", out var baseline))
            foreach (var name in results.Keys.ToList())
                results[name] = results[name] with { SpeedupVsFp32 = baseline.UnetStepS / results[name].UnetStepS };

        var findings = new List<Finding>();
        var profiles = new Dictionary<string, IReadOnlyDictionary<string, double>>();
        if (options.Findings && results.Count > 0)
        {
            string subject = results.ContainsKey(BenchVariant.Production) ? BenchVariant.Production : results.Keys.Last();
            findings.AddRange(await UNetFindingsAsync(probes, subject, bundles[subject], CacheOf(subject), options, ct));
            findings.AddRange(await VaeFindingsAsync(probes, fp32, work, options, progress, ct));
            foreach (string name in new[] { "fp32", subject }.Where(results.ContainsKey).Distinct())
            {
                var profiled = await probes.RunAsync($"{name}-unet-profile", new ProbeRequest
                {
                    Kind = ProbeKind.UNet, Bundle = bundles[name], Cache = CacheOf(name), Repeats = options.Repeats, Profile = true,
                }, ct);
                profiles[name] = profiled.ModelRunPart.SecondsByOperator!.OrderByDescending(f => f.Value).ToDictionary(f => f.Key, f => f.Value);
            }
        }

        var images = new List<ImageRow>();
        var deepCache = new List<DeepCacheRow>();
        if (options.TimeToImage && bundles.ContainsKey(BenchVariant.Production))
        {
            var recipes = ImageRecipe.All.Where(r => options.Recipes.Contains(r.Key)).ToList();
            if (recipes.Any(r => r.Variant == BenchVariant.FewStep.Name))
            {
                bundles[BenchVariant.FewStep.Name] = await EnsureVariantAsync(fp32, work, BenchVariant.FewStep, options, progress, ct);
                EnsureTaesd(bundles[BenchVariant.FewStep.Name], options.GraphsDirectory);
            }
            async Task<ImageRow> TimeImageAsync(ImageRecipe recipe, int interval)
            {
                // The long recipes once; the few-step ones are short enough for the usual repeats.
                int repeats = recipe.Steps > 8 ? 1 : options.Repeats;
                var r = await probes.RunAsync($"image-{recipe.Variant}-{recipe.Scheduler}{recipe.Steps}-{recipe.Decoder}{(interval > 1 ? $"-cache{interval}" : "")}{(recipe.MemoryBudget is { } b ? $"-budget{b}" : "")}", new ProbeRequest
                {
                    Kind = ProbeKind.Image, Bundle = bundles[recipe.Variant], Cache = CacheOf(recipe.Variant), Repeats = repeats,
                    Scheduler = recipe.Scheduler, Steps = recipe.Steps, GuidanceScale = recipe.GuidanceScale, Decoder = recipe.Decoder, CacheInterval = interval,
                    MemoryBudget = recipe.MemoryBudget is { } budget ? MemoryPlan.ParseBytes(budget) : null,
                }, ct);
                var row = ImageRow.From(recipe, r);
                progress.Report($"{recipe.Label}{(interval > 1 ? $", DeepCache interval {interval}" : "")}: {row.ImageS:F2} s, peak RSS {r.PeakRssBytes / 1e9:F2} GB");
                return row;
            }
            foreach (var recipe in recipes) images.Add(await TimeImageAsync(recipe, 1));

            var multiStep = recipes.Where(r => r.IsMultiStep).ToList();
            if (options.DeepCacheIntervals.Count > 0 && multiStep.Count > 0)
                foreach (var recipe in multiStep)
                {
                    var plain = images.Single(i => i.Label == recipe.Label);
                    deepCache.Add(new DeepCacheRow(plain, 1, 1));
                    foreach (int interval in options.DeepCacheIntervals)
                    {
                        var cached = await TimeImageAsync(recipe, interval);
                        deepCache.Add(new DeepCacheRow(cached, interval, plain.ImageS / cached.ImageS));
                    }
                }
        }

        var report = BenchReport.Create(options, results, findings, profiles, images, deepCache, sd15: options.Fp32Bundle is null, total.Elapsed);
        if (options.QualityPairs > 0) report = await WithQualityAsync(report, options, progress, ct);
        await report.WriteAsync(options.MarkdownPath, options.JsonPath, ct);
        progress.Report($"wrote {options.MarkdownPath}, {BenchReport.ChartPath(options.MarkdownPath)} and {options.JsonPath} in {total.Elapsed.TotalMinutes:F1} min");
        return report;
    }

    /// <summary>
    /// <paramref name="report"/> with every row's quality measured on the trained model (<see cref="BenchQuality"/>): variant rows, the
    /// multi-step time-to-image rows and their DeepCache intervals. Also run on a saved report (<c>--from-json --measure-quality</c>):
    /// the speed figures stay those of their run.
    /// </summary>
    public static async Task<BenchReport> WithQualityAsync(BenchReport report, BenchOptions options, IProgress<string> progress, CancellationToken ct)
    {
        string work = Path.GetFullPath(options.WorkDirectory);
        var quality = new BenchQuality(Path.GetFullPath(options.QualityBundle), Path.GetFullPath(options.QualityFewStepBundle), work, options.QualityPairs, progress);
        var variants = new Dictionary<string, VariantResult>();
        foreach (var (name, v) in report.Variants)
            variants[name] = BenchVariant.All.FirstOrDefault(b => b.Name == name) is { } known ? v with { Quality = await quality.ForVariantAsync(known, ct) } : v;
        var images = new List<ImageRow>();
        foreach (var row in report.TimeToImage) images.Add(row with { Quality = await quality.ForImageAsync(row, 1, ct) });
        var deepCache = new List<DeepCacheRow>();
        foreach (var r in report.DeepCache)
            deepCache.Add(r with
            {
                Image = r.Image with { Quality = r.Interval == 1 ? images.FirstOrDefault(i => i.Label == r.Image.Label)?.Quality : await quality.ForImageAsync(r.Image, r.Interval, ct) },
            });
        return report with
        {
            Variants = variants, TimeToImage = images, DeepCache = deepCache, QualityBundle = Path.GetFileName(Path.TrimEndingDirectorySeparator(options.QualityBundle)),
            Targets = BenchReport.TargetsOf(variants, images, deepCache),
        };
    }

    /// <summary>The optimized bundle of a variant, made once and reused while the FP32 bundle and the recipe are the same.</summary>
    private static async Task<string> EnsureVariantAsync(string fp32, string work, BenchVariant variant, BenchOptions options, IProgress<string> progress, CancellationToken ct)
    {
        string dir = Path.Combine(work, "variants", variant.Name);
        string recipe = JsonSerializer.Serialize(new
        {
            source = fp32, sourceUnet = File.GetLastWriteTimeUtc(ModelBundle.Open(fp32).Unet.Path).Ticks, variant, options.CalibrationPrompts, options.CalibrationSteps,
            quantization = new QuantizationOptions(), // a changed default makes the variant again
        });
        string stamp = Path.Combine(dir, ".bench-variant.json");
        if (File.Exists(stamp) && await File.ReadAllTextAsync(stamp, ct) == recipe) { progress.Report($"reusing {dir}"); return dir; }
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);

        string prompts = Path.Combine(work, "calibration-prompts.txt");
        await File.WriteAllLinesAsync(prompts, Calibration.DefaultPrompts.Take(Math.Max(1, options.CalibrationPrompts)), ct);
        var watch = Stopwatch.StartNew();
        await BundleOptimizer.OptimizeAsync(new OptimizeOptions
        {
            ModelDirectory = fp32, OutputDirectory = dir, TomeRatio = variant.TomeRatio, FuseAttention = true, Batch = variant.Batch, DeepCache = variant.DeepCache,
            QuantizeTextEncoder = variant.Int8TextEncoder,
            Quantization = new QuantizationOptions(), CalibrationFile = prompts, CalibrationSteps = options.CalibrationSteps,
            Fidelity = false, // the bench measures quality itself, on the trained model
        }, new SynchronousProgress(m => progress.Report($"optimize {variant.Name}: {m}")), ct);
        progress.Report($"optimized {variant.Name} in {watch.Elapsed.TotalSeconds:F0} s");
        await File.WriteAllTextAsync(stamp, recipe, ct);
        return dir;
    }

    /// <summary>The real TAESD (sd15-graphs/taesd_decoder, random weights) beside a bundle's VAE, as a bundle carries it.</summary>
    private static void EnsureTaesd(string bundle, string graphsDirectory)
    {
        string target = Path.Combine(bundle, ModelBundle.TinyDecoderFolder);
        if (File.Exists(Path.Combine(target, "model.onnx"))) return;
        Directory.CreateDirectory(target);
        foreach (string file in new[] { "config.json", "model.onnx" })
            File.Copy(Path.Combine(graphsDirectory, "taesd_decoder", file), Path.Combine(target, file), overwrite: true);
    }

    /// <summary>The UNet's files, and the three models a generation loads (text encoder, UNet, VAE decoder): the floor of its resident memory.</summary>
    private static (long Unet, long Models) SizesOnDisk(string bundle)
    {
        var b = ModelBundle.Open(bundle);
        long unet = FolderBytes(Path.GetDirectoryName(b.Unet.Path)!);
        return (unet, unet + FolderBytes(Path.GetDirectoryName(b.TextEncoder.Path)!) + FolderBytes(Path.GetDirectoryName(b.VaeDecoder.Path)!));
    }

    private static long FolderBytes(string dir) =>
        Directory.EnumerateFiles(dir).Where(f => !f.EndsWith(".json", StringComparison.Ordinal)).Sum(f => new FileInfo(f).Length);

    /// <summary>Session settings on the production UNet: threads against cores, optimization level, arena and memory pattern.</summary>
    private static async Task<List<Finding>> UNetFindingsAsync(ProbeProcess probes, string variant, string bundle, string cache, BenchOptions options, CancellationToken ct)
    {
        var findings = new List<Finding>();
        ProbeRequest Request(int? threads = null) => new() { Kind = ProbeKind.UNet, Bundle = bundle, Cache = cache, Threads = threads, Repeats = options.Repeats };
        async Task<ProbeResult> Probe(string label, ProbeRequest request) => await probes.RunAsync($"{variant}-unet-{label}", request, ct);

        int cores = CpuInfo.PhysicalCores;
        var baseline = await Probe("default", Request());
        Finding Add(string group, string setting, ProbeResult r, string note = "") =>
            new(group, $"{variant} UNet step", setting, r.ModelRunPart.RunS, baseline.ModelRunPart.RunS / r.ModelRunPart.RunS,
                r.PeakRssBytes, r.ModelRunPart.CreateS, note);

        findings.Add(Add("threads", $"{cores} intra-op threads = physical cores (default)", baseline));
        foreach (int threads in new[] { 1, 2 * Environment.ProcessorCount }.Where(t => t != cores).Distinct())
            findings.Add(Add("threads", $"{threads} intra-op threads", await Probe($"threads{threads}", Request(threads))));
        foreach (var level in new[] { GraphOptimizationLevel.ORT_ENABLE_BASIC, GraphOptimizationLevel.ORT_ENABLE_EXTENDED })
            findings.Add(Add("optimization level", $"{level} (optimized at load, no cache)",
                await Probe(level.ToString(), Request() with { OptimizationLevel = level, Cache = null }), "create_s is a cold load; the default's is from the cache"));
        findings.Add(Add("memory", "memory pattern on (ORT's default; ours is off)", await Probe("mempattern", Request() with { MemoryPattern = true })));
        findings.Add(Add("memory", "CPU memory arena off", await Probe("no-arena", Request() with { CpuMemArena = false })));
        return findings;
    }

    /// <summary>
    /// The VAE decoder at full size: FP32 against INT8 (its own calibration on random latents: values don't change speed),
    /// whole against 2×2 overlapping tiles (diffusers' tiled decode; less memory, more pixels computed).
    /// </summary>
    private static async Task<List<Finding>> VaeFindingsAsync(ProbeProcess probes, string fp32, string work, BenchOptions options, IProgress<string> progress, CancellationToken ct)
    {
        var bundle = ModelBundle.Open(fp32);
        int latent = bundle.DefaultHeight / bundle.VaeScaleFactor;
        int tile = latent * 5 / 8; // 2×2 tiles overlapping by a quarter of the image, as diffusers' tiling does
        string int8 = await EnsureInt8VaeBundleAsync(fp32, Path.Combine(work, "variants", "vae-int8"), latent, progress, ct);

        var findings = new List<Finding>();
        ProbeResult? baseline = null;
        foreach (var (name, dir) in new[] { ("FP32", fp32), ("INT8", int8) })
            foreach (var (layout, tileLatent, tiles) in new[] { ("whole", (int?)null, 1), ($"2×2 tiles of {tile * bundle.VaeScaleFactor}²", tile, 4) })
            {
                var r = await probes.RunAsync($"vae-{name.ToLowerInvariant()}-{(tiles == 1 ? "whole" : "tiled")}", new ProbeRequest
                {
                    Kind = ProbeKind.Vae, Bundle = dir, Repeats = options.Repeats, VaeTileLatent = tileLatent, VaeTiles = tiles,
                }, ct);
                baseline ??= r;
                findings.Add(new Finding("VAE decoder", $"VAE decode {bundle.DefaultWidth}²", $"{name}, {layout}", r.ModelRunPart.PerImageS,
                    baseline.ModelRunPart.PerImageS / r.ModelRunPart.PerImageS, r.PeakRssBytes, r.ModelRunPart.CreateS,
                    tiles == 1 ? "" : $"{tiles} runs of {tile}×{tile} latents; blending not included"));
            }
        return findings;
    }

    /// <summary>A bundle whose VAE decoder is INT8 (the rest linked to the FP32 bundle), quantized once and reused.</summary>
    private static async Task<string> EnsureInt8VaeBundleAsync(string fp32, string dir, int latent, IProgress<string> progress, CancellationToken ct)
    {
        string stamp = Path.Combine(dir, ".bench-variant.json"), recipe = $"vae-int8 of {fp32}";
        if (File.Exists(stamp) && await File.ReadAllTextAsync(stamp, ct) == recipe) return dir;
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.CreateDirectory(dir);
        foreach (string entry in Directory.EnumerateFileSystemEntries(fp32))
        {
            string name = Path.GetFileName(entry), target = Path.Combine(dir, name);
            if (name == "vae_decoder" || name.StartsWith('.')) continue;
            if (Directory.Exists(entry)) Directory.CreateSymbolicLink(target, entry);
            else File.CreateSymbolicLink(target, entry);
        }
        string decoder = Path.Combine(dir, "vae_decoder");
        Directory.CreateDirectory(decoder);
        foreach (string file in Directory.EnumerateFiles(Path.Combine(fp32, "vae_decoder"))) File.Copy(file, Path.Combine(decoder, Path.GetFileName(file)));

        float scaling = ModelBundle.Open(fp32).VaeScalingFactor;
        var latents = Enumerable.Range(0, 2).Select(seed =>
        {
            var values = new float[4 * latent * latent];
            new Inference.Pipeline.SeededGaussianNoise(seed).Fill(values);
            for (int i = 0; i < values.Length; i++) values[i] /= scaling;
            return values;
        }).ToList();
        await VaeDecoderQuantizer.QuantizeAsync(decoder, latents, latent, latent, new QuantizationOptions(), new SessionSettings(),
            new SynchronousProgress(m => progress.Report($"VAE INT8: {m}")), ct);
        await File.WriteAllTextAsync(stamp, recipe, ct);
        return dir;
    }
}
