using System.Text.Json;
using System.Text.Json.Serialization;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Bundle;

/// <summary>
/// What a model can do and what requests get by default, read from its bundle without creating a session (configs and graph
/// metadata): its family, schedulers (each with its defaults), decoders, DeepCache, image-to-image, guidance distillation,
/// UNet batch, image and latent size. The request rules (<see cref="GenerationRules"/>) check requests against it, so the API
/// refuses what the model cannot run on every instance, loaded or not. <c>sdf optimize</c> writes it beside the bundle
/// (<see cref="FileName"/>), where the API side reads it without downloading the model.
/// </summary>
public sealed record ModelProfile
{
    public const string FileName = "sdf_profile.json";

    /// <summary>LatentConsistencyModelPipeline's guidance scale for a guidance-distilled UNet (it is an input there, not a second pass).</summary>
    public const double DistilledGuidance = 8.5;

    public required string Model { get; init; }

    /// <summary>The model family: sd1 (Stable Diffusion 1.x: CLIP ViT-L text states of width 768), the only one the pipeline runs today.</summary>
    public required string Family { get; init; }
    public required int Width { get; init; }
    public required int Height { get; init; }
    public required int LatentChannels { get; init; }

    /// <summary>Image pixels per latent pixel (8 for SD).</summary>
    public required int VaeScaleFactor { get; init; }

    /// <summary>The schedulers the bundle's scheduler config can configure, each with what a request that leaves fields out gets.</summary>
    public required IReadOnlyList<GenerationDefaults> Schedulers { get; init; }
    public required string DefaultScheduler { get; init; }

    /// <summary>Known schedulers this config cannot configure, and why (named in the refusal).</summary>
    public IReadOnlyDictionary<string, string> Unsupported { get; init; } = new Dictionary<string, string>();

    /// <summary>The decoders a request may name, the default first.</summary>
    public required IReadOnlyList<string> Decoders { get; init; }
    public bool GuidanceDistilled { get; init; }
    public bool DeepCache { get; init; }
    public bool ImageToImage { get; init; }

    /// <summary>The UNet batch loaded first: fixed by an optimized UNet's graph, else 2 (guidance), or 1 for a guidance-distilled UNet.</summary>
    public int UNetBatch { get; init; }

    /// <summary>Whether <see cref="UNetBatch"/> is the graph's own (an optimized, static-shape UNet): every request then runs it.</summary>
    public bool FixedUNetBatch { get; init; }

    /// <summary>
    /// What the full VAE decoder's activations take per output pixel, estimated from its width at full resolution (null without a
    /// full VAE): the memory plan's figure where it cannot measure one (<see cref="DecodeTensorsPerPixel"/>).
    /// </summary>
    public double? FullDecodeBytesPerPixel { get; init; }

    /// <summary>
    /// Full-resolution float tensors a VAE decode holds at once, per channel: measured on SD 1.5's decoder (5.6 kB per pixel with 128
    /// channels, ~1.45 GB for a whole 512² decode), and the same for any AutoencoderKL, whose largest activations are its last up block's.
    /// </summary>
    public const double DecodeTensorsPerPixel = 11;

    /// <summary>Prompts that show what the model draws (its <see cref="ModelCard"/>'s), for the playground to offer.</summary>
    public IReadOnlyList<string> ExamplePrompts { get; init; } = [];

    [JsonIgnore] public string DefaultDecoder => Decoders[0];
    [JsonIgnore] public int LatentHeight => Height / VaeScaleFactor;
    [JsonIgnore] public int LatentWidth => Width / VaeScaleFactor;
    [JsonIgnore] public int LatentSize => LatentChannels * LatentHeight * LatentWidth;
    [JsonIgnore] public IEnumerable<string> SchedulerNames => Schedulers.Select(s => s.Scheduler);

    /// <summary>The defaults for <paramref name="scheduler"/> (null = the model's own scheduler).</summary>
    public GenerationDefaults DefaultsFor(string? scheduler) =>
        Schedulers.FirstOrDefault(s => s.Scheduler == (scheduler ?? DefaultScheduler)) ?? Schedulers.First(s => s.Scheduler == DefaultScheduler);

    /// <summary>This profile as a service runs it: compiled for <paramref name="width"/>×<paramref name="height"/>, with its default decoder.</summary>
    public ModelProfile For(int width, int height, string? defaultDecoder = null) => this with
    {
        Width = width, Height = height,
        Decoders = defaultDecoder is null ? Decoders : [defaultDecoder, .. Decoders.Where(d => d != defaultDecoder)],
    };

    /// <summary>What <paramref name="bundle"/> can do (no session is created).</summary>
    public static ModelProfile Read(ModelBundle bundle)
    {
        var supported = new List<GenerationDefaults>();
        var unsupported = new Dictionary<string, string>();
        foreach (var row in SchedulerCatalog.All)
        {
            if (!SchedulerCatalog.TryCreate(row.Name, bundle.Scheduler, out string? why)) { unsupported[row.Name] = why!; continue; }
            int maxSteps = row.MaxSteps(bundle.Scheduler, GenerationRequest.MaxSteps);
            // A few-step sampler on a plain UNet runs without guidance; otherwise the model card's word, else the family's default.
            double guidance = !bundle.GuidanceDistilled && row.FewStep ? row.DefaultGuidance
                : bundle.Card?.GuidanceScale ?? (bundle.GuidanceDistilled ? DistilledGuidance : row.DefaultGuidance);
            int steps = row.FewStep ? row.DefaultSteps : bundle.Card?.Steps ?? row.DefaultSteps;
            supported.Add(new GenerationDefaults(row.Name, Math.Min(steps, maxSteps), guidance, maxSteps));
        }
        string defaultScheduler = SchedulerCatalog.DefaultFor(bundle.Scheduler).Name;
        if (unsupported.TryGetValue(defaultScheduler, out string? whyNot))
            throw new ModelBundleException($"{Path.Combine(bundle.Directory, "scheduler", "scheduler_config.json")}: {whyNot}.");
        var channels = bundle.Unet.FindInput("sample")!.Dims[1].Value;
        return new ModelProfile
        {
            Model = bundle.Name, Family = "sd1", Width = bundle.DefaultWidth, Height = bundle.DefaultHeight,
            LatentChannels = channels is > 0 ? (int)channels : 4, VaeScaleFactor = bundle.VaeScaleFactor,
            Schedulers = supported, DefaultScheduler = defaultScheduler, Unsupported = unsupported,
            Decoders = [.. bundle.Decoders.Select(d => d.Name)], GuidanceDistilled = bundle.GuidanceDistilled,
            DeepCache = bundle.DeepCache is not null, ImageToImage = bundle.Encoder is not null,
            UNetBatch = bundle.FixedUnetBatch ?? (bundle.GuidanceDistilled ? 1 : 2), FixedUNetBatch = bundle.FixedUnetBatch is not null,
            FullDecodeBytesPerPixel = bundle.VaeFullResolutionChannels * DecodeTensorsPerPixel * sizeof(float),
            ExamplePrompts = bundle.Card?.ExamplePrompts ?? [],
        };
    }

    /// <summary>The profile of the bundle in <paramref name="directory"/>: its <see cref="FileName"/> when it has one, else read from the bundle.</summary>
    public static ModelProfile Load(string directory)
    {
        string path = Path.Combine(directory, FileName);
        return File.Exists(path) ? Parse(File.ReadAllBytes(path), path) : Read(ModelBundle.Open(directory));
    }

    /// <exception cref="ModelBundleException">Not a profile this version reads.</exception>
    public static ModelProfile Parse(ReadOnlySpan<byte> json, string source)
    {
        try
        {
            var profile = JsonSerializer.Deserialize<ModelProfile>(json, Json);
            if (profile is null || profile.Schedulers.Count == 0 || profile.Decoders.Count == 0 || profile.VaeScaleFactor <= 0
                || !profile.Schedulers.Any(s => s.Scheduler == profile.DefaultScheduler))
                throw new ModelBundleException($"{source}: not a model profile (it lists no schedulers or decoders); write it again with sdf optimize.");
            return profile;
        }
        catch (JsonException e) { throw new ModelBundleException($"{source}: not a model profile ({e.Message}); write it again with sdf optimize.", e); }
    }

    /// <summary>Writes the profile beside the bundle, for the API side to read.</summary>
    public void Write(string directory) => File.WriteAllBytes(Path.Combine(directory, FileName), ToJson());

    public byte[] ToJson() => JsonSerializer.SerializeToUtf8Bytes(this, Json);

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true };
}
