using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// One text-to-image request, or image-to-image with an <see cref="InitImage"/>. What it leaves out takes the model's defaults
/// (<see cref="GenerationDefaults"/>): diffusers' StableDiffusionPipeline's for SD bundles, LatentConsistencyModelPipeline's for
/// LCM ones, StableDiffusionImg2ImgPipeline's strength (0.8).
/// </summary>
public sealed record GenerationRequest
{
    public const int MinSteps = 1, MaxSteps = 150;
    public const double MinGuidance = 0, MaxGuidance = 30;
    public const int MinTileSize = 64, MaxTileSize = 2048;
    public const double DefaultStrength = 0.8;

    /// <summary>Chosen seeds stay at or below 2^53 − 1, so JSON clients (JavaScript numbers) can hand them back exactly.</summary>
    public const long MaxSeed = (1L << 53) - 1;

    public required string Prompt { get; init; }
    public string NegativePrompt { get; init; } = "";

    /// <summary>Denoising steps; null = the model's default for the scheduler (50, or 4 for lcm).</summary>
    public int? Steps { get; init; }

    /// <summary>Guidance scale; null = the model's default (7.5; 8.5 for guidance-distilled LCM UNets; 1 for lcm on a plain UNet).</summary>
    public double? GuidanceScale { get; init; }

    /// <summary>Determines the initial latents (see <see cref="SeededGaussianNoise"/>); null = a random seed, reported in the result.</summary>
    public long? Seed { get; init; }

    /// <summary>A name from <see cref="SchedulerCatalog"/>; null = the bundle's scheduler.</summary>
    public string? Scheduler { get; init; }

    /// <summary>Use Karras sigmas (Euler, LMS, DPM++); null = what the scheduler config says.</summary>
    public bool? KarrasSigmas { get; init; }

    /// <summary>full (the VAE) or tiny (TAESD); null = the pipeline's default decoder.</summary>
    public string? Decoder { get; init; }

    /// <summary>
    /// Decode the full VAE tile by tile (diffusers' tiled_decode): the activations of one tile instead of the whole image,
    /// slightly different pixels at the seams. null/false = one whole decode.
    /// </summary>
    public bool? TiledDecode { get; init; }

    /// <summary>The tile side in pixels with <see cref="TiledDecode"/>; null = the VAE config's sample_size, as diffusers.</summary>
    public int? TileSize { get; init; }

    /// <summary>
    /// DeepCache: every N-th UNet call runs the whole UNet, the calls between only its shallow branch on the cached deep
    /// feature (needs a bundle from <c>sdf optimize --deep-cache</c>). null or 1 = off.
    /// </summary>
    public int? CacheInterval { get; init; }

    /// <summary>uniform (DeepCache's helper) or nonuniform (its pipeline's quadratic schedule); null = uniform.</summary>
    public string? CacheSchedule { get; init; }

    /// <summary>Must equal the pipeline's compiled size when given (the shapes are static).</summary>
    public int? Width { get; init; }
    public int? Height { get; init; }

    /// <summary>
    /// Explicit initial latents [1, 4, H/8, W/8] (NCHW), instead of drawing them from the seed; for image-to-image, the noise
    /// added to the encoded image (diffusers' prepare_latents noise).
    /// </summary>
    public float[]? InitialLatents { get; init; }

    /// <summary>Image-to-image: the picture to start from, at the compiled size (<see cref="Pipeline.InitImage.Decode"/> fits one).</summary>
    public InitImage? InitImage { get; init; }

    /// <summary>
    /// How far image-to-image departs from <see cref="InitImage"/>, 0 &lt; s ≤ 1: the last int(steps·s) of the schedule's steps run,
    /// from the encoded image noised to the first of them (1 = from pure noise). null = <see cref="DefaultStrength"/>.
    /// </summary>
    public double? Strength { get; init; }

    /// <summary>
    /// Image-to-image: the ε [1, 4, H/8, W/8] that samples the encoder's Gaussian (mean + std·ε); null = the seed's stream.
    /// Read only by encoders exported with their parameters (<see cref="Bundle.VaeEncoderKind.Parameters"/>).
    /// </summary>
    public float[]? EncoderNoise { get; init; }

    /// <summary>
    /// Where schedulers that add noise between steps (lcm, euler-a) take it from; null = the seed's stream, continued after
    /// the initial latents. Stateful: one instance per generation.
    /// </summary>
    public IGaussianNoise? StepNoise { get; init; }

    /// <summary>The rules that need no model (<see cref="GenerationRules"/>); throws on the first broken one.</summary>
    public void ValidateParameters() => GenerationRules.ThrowIfInvalid(this, profile: null);
}

/// <summary>What a request that leaves them out gets, for one model and scheduler.</summary>
public sealed record GenerationDefaults(string Scheduler, int Steps, double GuidanceScale, int MaxSteps);

/// <summary>A request the pipeline cannot run: the parameter and why, for a 400 or a CLI usage error.</summary>
public sealed class InvalidGenerationRequestException(string parameter, string message) : ArgumentException(message, parameter)
{
    /// <summary>What is wrong, without the parameter's name that <see cref="ArgumentException.Message"/> appends.</summary>
    public string Reason { get; } = message;
}
