using System.Text.Json;
using SdFunctions.Inference.Onnx;
using SdFunctions.Inference.Schedulers;
using SdFunctions.Inference.Text;

namespace SdFunctions.Inference.Bundle;

/// <summary>
/// A Stable Diffusion 1.x bundle in the diffusers ONNX layout that <c>optimum-cli export onnx</c> writes:
/// model_index.json, tokenizer/, text_encoder/, unet/, vae_decoder/, optional vae_encoder/, scheduler/, and optionally
/// taesd_decoder/ (a diffusers AutoencoderTiny beside the full VAE; vae_decoder/ may itself be one).
/// <see cref="Open"/> checks that every file is there and readable, that each graph declares the inputs the
/// pipeline feeds with supported dtypes, and that external weight files exist — before any session is made.
/// </summary>
public sealed class ModelBundle
{
    public required string Directory { get; init; }
    public required string Name { get; init; }
    public required ClipTokenizer Tokenizer { get; init; }
    public required OnnxModelInfo TextEncoder { get; init; }
    public required OnnxModelInfo Unet { get; init; }
    public required OnnxModelInfo VaeDecoder { get; init; }
    public OnnxModelInfo? VaeEncoder { get; init; }

    /// <summary>The image encoder image-to-image needs; null when the bundle has no vae_encoder/.</summary>
    public VaeEncoderComponent? Encoder { get; init; }
    public required SchedulerConfig Scheduler { get; init; }

    /// <summary>The image decoders a request can choose: "full" (AutoencoderKL) and/or "tiny" (TAESD), the default first.</summary>
    public required IReadOnlyList<DecoderComponent> Decoders { get; init; }

    /// <summary>
    /// The width of <c>timestep_cond</c> (time_cond_proj_dim) for a guidance-distilled UNet (LCM), read from the graph's
    /// input; null for a UNet without that input.
    /// </summary>
    public int? UnetTimestepCondDim { get; init; }

    /// <summary>What the model's authors declare in <see cref="ModelCard.FileName"/>; null when the bundle has none.</summary>
    public ModelCard? Card { get; init; }

    /// <summary>The UNet cut for DeepCache (<c>sdf optimize --deep-cache</c>); null when the bundle has none.</summary>
    public DeepCacheGraphs? DeepCache { get; init; }

    /// <summary>A guidance-distilled UNet takes the guidance scale as an embedding and has no unconditional pass.</summary>
    public bool GuidanceDistilled => UnetTimestepCondDim is not null;

    /// <summary>The folder a tiny decoder beside the full VAE lives in.</summary>
    public const string TinyDecoderFolder = "taesd_decoder";

    /// <summary>unet/config.json sample_size (latent pixels), when the bundle has it.</summary>
    public int? UnetSampleSize { get; init; }

    /// <summary>Image pixels per latent pixel: 2^(number of VAE blocks − 1), 8 for SD.</summary>
    public int VaeScaleFactor { get; init; } = 8;

    /// <summary>The full VAE decoder's channels at full resolution (its config's first block_out_channels: 128 for SD), when its config says.</summary>
    public int? VaeFullResolutionChannels { get; init; }

    /// <summary>vae_decoder's config scaling_factor: latents are divided by it before decoding (0.18215 for SD 1.x).</summary>
    public float VaeScalingFactor { get; init; } = 0.18215f;

    /// <summary>
    /// The image size to compile for when none is asked: the UNet's own size when its graph fixes it (an optimized
    /// bundle), else the size it was trained for (unet/config.json sample_size; 512 for SD 1.x).
    /// </summary>
    public int DefaultWidth => (FixedSampleDim(3) ?? UnetSampleSize ?? 64) * VaeScaleFactor;
    public int DefaultHeight => (FixedSampleDim(2) ?? UnetSampleSize ?? 64) * VaeScaleFactor;

    /// <summary>The UNet's batch when its graph fixes it (a static-shape optimized UNet), else null.</summary>
    public int? FixedUnetBatch => FixedSampleDim(0);

    private int? FixedSampleDim(int index) =>
        Unet.FindInput("sample") is { } s && index < s.Dims.Count && s.Dims[index].Value is > 0 and var v ? (int)v : null;

    public static ModelBundle Open(string directory)
    {
        if (!System.IO.Directory.Exists(directory))
            throw new ModelBundleException($"Model directory '{directory}' does not exist.");
        string dir = Path.GetFullPath(directory);

        string index = Require(dir, "model_index.json");
        string name = ReadJson(index, r => r.TryGetProperty("_name_or_path", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString() : null)
            ?? Path.GetFileName(dir.TrimEnd(Path.DirectorySeparatorChar));

        var tokenizer = OpenTokenizer(dir);

        var scheduler = Guard(Require(dir, Path.Combine("scheduler", "scheduler_config.json")), SchedulerConfig.Load);
        var textEncoder = ReadModel(dir, "text_encoder");
        var unet = ReadModel(dir, "unet");
        var vaeDecoder = ReadModel(dir, "vae_decoder");
        var vaeEncoder = File.Exists(Path.Combine(dir, "vae_encoder", "model.onnx")) ? ReadModel(dir, "vae_encoder") : null;
        var taesd = File.Exists(Path.Combine(dir, TinyDecoderFolder, "model.onnx")) ? ReadModel(dir, TinyDecoderFolder) : null;

        ExpectInput(textEncoder, "input_ids", [OnnxElementType.Int32, OnnxElementType.Int64], rank: 2);
        ExpectInput(unet, "sample", [OnnxElementType.Float], rank: 4);
        ExpectInput(unet, "timestep", [OnnxElementType.Int64, OnnxElementType.Float], rank: null);
        ExpectInput(unet, "encoder_hidden_states", [OnnxElementType.Float], rank: 3);
        ExpectInput(vaeDecoder, "latent_sample", [OnnxElementType.Float], rank: 4);
        ExpectOutput(textEncoder, OnnxElementType.Float, rank: 3, preferred: "last_hidden_state");
        ExpectOutput(unet, OnnxElementType.Float, rank: 4, preferred: "out_sample");
        ExpectOutput(vaeDecoder, OnnxElementType.Float, rank: 4, preferred: "sample");
        if (taesd is not null)
        {
            ExpectInput(taesd, "latent_sample", [OnnxElementType.Float], rank: 4);
            ExpectOutput(taesd, OnnxElementType.Float, rank: 4, preferred: "sample");
        }
        int? condDim = null;
        if (unet.FindInput(UNetTimestepCond) is not null)
        {
            ExpectInput(unet, UNetTimestepCond, [OnnxElementType.Float], rank: 2);
            condDim = unet.FindInput(UNetTimestepCond)!.Dims[1].Value is > 0 and var d ? (int)d : throw new ModelBundleException(
                $"{unet.Path}: input '{UNetTimestepCond}' does not declare its width (dim 1, time_cond_proj_dim); expected a fixed size such as 256.");
        }

        DeepCacheGraphs? deepCache = null;
        if (File.Exists(Path.Combine(dir, "unet", DeepCacheFullFile)) || File.Exists(Path.Combine(dir, "unet", DeepCacheShallowFile)))
        {
            var full = ReadModel(dir, "unet", DeepCacheFullFile);
            var shallow = ReadModel(dir, "unet", DeepCacheShallowFile);
            var fed = shallow.FindInput(DeepFeature) ?? throw new ModelBundleException($"{shallow.Path} has no input '{DeepFeature}': not a DeepCache shallow graph.");
            var made = full.Outputs.FirstOrDefault(o => o.Name == DeepFeature) ?? throw new ModelBundleException($"{full.Path} has no output '{DeepFeature}': not a DeepCache full graph.");
            if (!made.Dims.SequenceEqual(fed.Dims) || made.Dims.Any(d => d.Value is null))
                throw new ModelBundleException($"{full.Path} outputs {made} but {shallow.Path} takes {fed}: the two DeepCache graphs must come from one sdf optimize run.");
            deepCache = new DeepCacheGraphs(full, shallow);
        }

        string unetConfig = Path.Combine(dir, "unet", "config.json");
        string vaeConfig = Path.Combine(dir, "vae_decoder", "config.json");
        int? sampleSize = File.Exists(unetConfig)
            ? ReadJson(unetConfig, r => r.TryGetProperty("sample_size", out var s) && s.ValueKind == JsonValueKind.Number ? s.GetInt32() : (int?)null)
            : null;
        var (vaeIsTiny, scale, scaling, vaeSampleSize, vaeChannels) = ReadVaeConfig(vaeConfig);
        VaeEncoderComponent? encoder = vaeEncoder is null ? null : OpenEncoder(dir, vaeEncoder, scaling);
        var decoders = new List<DecoderComponent>();
        decoders.Add(new DecoderComponent(vaeIsTiny ? DecoderComponent.Tiny : DecoderComponent.Full, "vae_decoder", vaeDecoder, scaling, vaeSampleSize));
        if (!vaeIsTiny && taesd is not null)
        {
            var (_, taesdScale, taesdScaling, _, _) = ReadVaeConfig(Path.Combine(dir, TinyDecoderFolder, "config.json"), tinyDefault: true);
            if (taesdScale != scale)
                throw new ModelBundleException($"{taesd.Path}: upsamples latents {taesdScale}×, the VAE {scale}×; a tiny decoder must share the VAE's latent layout.");
            decoders.Add(new DecoderComponent(DecoderComponent.Tiny, TinyDecoderFolder, taesd, taesdScaling));
        }

        return new ModelBundle
        {
            Directory = dir, Name = name, Tokenizer = tokenizer, Scheduler = scheduler,
            TextEncoder = textEncoder, Unet = unet, VaeDecoder = vaeDecoder, VaeEncoder = vaeEncoder, Encoder = encoder,
            UnetSampleSize = sampleSize, VaeScaleFactor = scale, VaeScalingFactor = scaling, VaeFullResolutionChannels = vaeIsTiny ? null : vaeChannels, Decoders = decoders, UnetTimestepCondDim = condDim,
            DeepCache = deepCache, Card = ModelCard.Read(dir),
        };
    }

    /// <summary>Checks vae_encoder's I/O and tells how it samples (from its output and its operators, not its folder's name).</summary>
    /// <param name="decoderScaling">What a vae_encoder without a config.json scales by: its VAE's decoder's factor.</param>
    private static VaeEncoderComponent OpenEncoder(string dir, OnnxModelInfo model, float decoderScaling)
    {
        ExpectInput(model, "sample", [OnnxElementType.Float], rank: 4);
        var output = model.Outputs.FirstOrDefault(o => o.Name is "latent_parameters" or "latent_sample") ?? model.Outputs.FirstOrDefault();
        if (output is null || output.ElementType != OnnxElementType.Float || output.Dims.Count != 4)
            throw new ModelBundleException($"{model.Path}: expected a float output of rank 4 (latent_sample or latent_parameters); it has {string.Join("; ", model.Outputs)}.");
        var kind = output.Name == "latent_parameters" || output.Dims[1].Value == 8 ? VaeEncoderKind.Parameters
            : model.OpTypes.Overlaps(VaeEncoderComponent.RandomOps) ? VaeEncoderKind.SampledInGraph
            : VaeEncoderKind.Deterministic;
        string config = Path.Combine(dir, "vae_encoder", "config.json");
        float scaling = File.Exists(config) ? ReadVaeConfig(config).Scaling : decoderScaling;
        return new VaeEncoderComponent(model, output, kind, scaling);
    }

    /// <summary>DeepCache's reused tensor: an output of <see cref="DeepCacheFullFile"/>, an input of <see cref="DeepCacheShallowFile"/>.</summary>
    public const string DeepFeature = "deep_feature";
    public const string DeepCacheFullFile = "model_deepcache_full.onnx", DeepCacheShallowFile = "model_deepcache_shallow.onnx";

    /// <summary>The UNet input of guidance-distilled models: the guidance-scale embedding.</summary>
    public const string UNetTimestepCond = "timestep_cond";

    /// <summary>
    /// What a VAE config says: whether it is an AutoencoderTiny, its upsampling factor (2^(blocks − 1)), the
    /// scaling_factor latents are divided by before decoding (AutoencoderKL's default 0.18215, AutoencoderTiny's 1.0) and its first block's channels.
    /// </summary>
    private static (bool Tiny, int Scale, float Scaling, int? SampleSize, int? FirstChannels) ReadVaeConfig(string path, bool tinyDefault = false)
    {
        if (!File.Exists(path)) return (tinyDefault, 8, tinyDefault ? 1f : 0.18215f, null, null);
        return ReadJson(path, r =>
        {
            bool tiny = r.TryGetProperty("_class_name", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString() == "AutoencoderTiny" : tinyDefault;
            int scale = r.TryGetProperty("block_out_channels", out var b) && b.ValueKind == JsonValueKind.Array ? 1 << (b.GetArrayLength() - 1) : 8;
            float scaling = r.TryGetProperty("scaling_factor", out var s) && s.ValueKind == JsonValueKind.Number ? s.GetSingle() : tiny ? 1f : 0.18215f;
            int? sampleSize = r.TryGetProperty("sample_size", out var z) && z.ValueKind == JsonValueKind.Number ? z.GetInt32() : null;
            int? first = b.ValueKind == JsonValueKind.Array && b.GetArrayLength() > 0 && b[0].ValueKind == JsonValueKind.Number ? b[0].GetInt32() : null;
            return (tiny, scale, scaling, sampleSize, first);
        });
    }

    /// <summary>Loads the CLIP tokenizer from a bundle's tokenizer/ folder; a missing or broken file is named.</summary>
    public static ClipTokenizer OpenTokenizer(string modelDirectory)
    {
        string dir = Path.Combine(modelDirectory, "tokenizer");
        foreach (string f in new[] { "vocab.json", "merges.txt" })
        {
            string path = Path.Combine(dir, f);
            if (!File.Exists(path))
                throw new ModelBundleException($"{path} is missing: a diffusers ONNX bundle (optimum-cli export onnx) has tokenizer/{f}.");
        }
        return Guard(dir, ClipTokenizer.Load);
    }

    /// <summary>The output the pipeline reads: the preferred name if present, else the first output.</summary>
    public static OnnxValueInfo MainOutput(OnnxModelInfo model, string preferred) =>
        model.Outputs.FirstOrDefault(o => o.Name == preferred) ?? model.Outputs[0];

    private static string Require(string dir, string relative)
    {
        string path = Path.Combine(dir, relative);
        if (!File.Exists(path))
            throw new ModelBundleException($"{path} is missing: a diffusers ONNX bundle (optimum-cli export onnx) has {relative.Replace('\\', '/')}.");
        return path;
    }

    private static OnnxModelInfo ReadModel(string dir, string component, string file = "model.onnx")
    {
        string path = Require(dir, Path.Combine(component, file));
        var info = Guard(path, OnnxModelInfo.Read);
        foreach (string data in info.ExternalDataFiles)
        {
            string dataPath = Path.Combine(Path.GetDirectoryName(path)!, data);
            if (!File.Exists(dataPath))
                throw new ModelBundleException($"{dataPath} is missing: {path} keeps its weights in that external data file, which must sit beside it.");
        }
        return info;
    }

    private static void ExpectInput(OnnxModelInfo model, string name, OnnxElementType[] types, int? rank)
    {
        var input = model.FindInput(name) ?? throw new ModelBundleException(
            $"{model.Path} has no input '{name}'. Its inputs are: {string.Join("; ", model.Inputs)}.");
        if (!types.Contains(input.ElementType))
            throw new ModelBundleException(
                $"{model.Path}: input '{name}' is {Lower(input.ElementType)}; expected {string.Join(" or ", types.Select(Lower))}.");
        if (rank is { } r && input.Dims.Count != r)
            throw new ModelBundleException($"{model.Path}: input '{name}' has rank {input.Dims.Count}; expected {r}.");
    }

    private static void ExpectOutput(OnnxModelInfo model, OnnxElementType type, int rank, string preferred)
    {
        if (model.Outputs.Count == 0) throw new ModelBundleException($"{model.Path} declares no outputs.");
        var output = MainOutput(model, preferred);
        if (output.ElementType != type || output.Dims.Count != rank)
            throw new ModelBundleException(
                $"{model.Path}: output '{output.Name}' is {Lower(output.ElementType)} of rank {output.Dims.Count}; expected {Lower(type)} of rank {rank}.");
    }

    private static string Lower(OnnxElementType t) => t.ToString().ToLowerInvariant();

    private static T Guard<T>(string path, Func<string, T> read)
    {
        try { return read(path); }
        catch (Exception e) when (e is InvalidDataException or JsonException or IOException or UnauthorizedAccessException)
        {
            throw new ModelBundleException(e.Message.StartsWith(path, StringComparison.Ordinal) ? e.Message : $"{path}: {e.Message}", e);
        }
    }

    private static T ReadJson<T>(string path, Func<JsonElement, T> read) => Guard(path, p =>
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(p));
        return read(doc.RootElement);
    });
}

/// <summary>
/// DeepCache's two UNet graphs over the UNet's weights: <see cref="Full"/> is the whole UNet that also outputs
/// <see cref="ModelBundle.DeepFeature"/>; <see cref="Shallow"/> takes it and runs only the outer branch.
/// </summary>
public sealed record DeepCacheGraphs(OnnxModelInfo Full, OnnxModelInfo Shallow)
{
    public IReadOnlyList<long> FeatureShape => Full.Outputs.First(o => o.Name == ModelBundle.DeepFeature).Dims.Select(d => d.Value!.Value).ToList();
}

/// <summary>
/// One image decoder of a bundle: its request name (<see cref="Full"/> = AutoencoderKL, <see cref="Tiny"/> = TAESD), its
/// folder, graph, and the scaling_factor latents are divided by before it decodes them. Both output images in about [−1, 1].
/// </summary>
/// <param name="SampleSize">The config's sample_size (image px): the tile side diffusers' tiled decode uses by default.</param>
public sealed record DecoderComponent(string Name, string Folder, OnnxModelInfo Model, float ScalingFactor, int? SampleSize = null)
{
    public const string Full = "full", Tiny = "tiny";
    public static readonly IReadOnlyList<string> Names = [Full, Tiny];
}

/// <summary>How a bundle's vae_encoder hands back latents.</summary>
public enum VaeEncoderKind
{
    /// <summary>concat(mean, logvar) (optimum ≥ 1.24's <c>latent_parameters</c>): sampled by the pipeline with seeded ε.</summary>
    Parameters,

    /// <summary>Latents with no randomness (TAESD's encoder).</summary>
    Deterministic,

    /// <summary>A sample drawn inside the graph by an unseeded RandomNormalLike (optimum ≤ 1.23): not reproducible.</summary>
    SampledInGraph,
}

/// <summary>A bundle's image encoder (image-to-image): its graph, the output read, how it samples, and the scaling_factor latents are multiplied by.</summary>
public sealed record VaeEncoderComponent(OnnxModelInfo Model, OnnxValueInfo Output, VaeEncoderKind Kind, float ScalingFactor)
{
    /// <summary>The operators that draw random numbers: an encoder using one samples inside the graph.</summary>
    public static readonly IReadOnlySet<string> RandomOps = new HashSet<string> { "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial" };
}
