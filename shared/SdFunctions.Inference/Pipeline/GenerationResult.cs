namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Progress after each denoising step. <see cref="Total"/> counts denoising iterations, which can exceed the
/// <see cref="Steps"/> asked for: PNDM runs steps + 1 (its first PLMS step takes two UNet evaluations, as in diffusers).
/// </summary>
public readonly record struct GenerationProgress(int Step, int Total, TimeSpan Elapsed)
{
    public int Steps { get; init; }
}

/// <summary>
/// Where a generation's time went: the phases (encode, each step, decode, total) and, inside them, the models' own
/// Run calls (text encoder, each UNet call, VAE decoder); what is left is the pipeline's own overhead.
/// </summary>
public sealed record GenerationTimings(TimeSpan Encode, IReadOnlyList<TimeSpan> Steps, TimeSpan Decode, TimeSpan Total,
    TimeSpan TextEncoderRuns, IReadOnlyList<TimeSpan> UNetRuns, TimeSpan VaeRun)
{
    public TimeSpan Denoise => Steps.Aggregate(TimeSpan.Zero, (a, b) => a + b);

    /// <summary>Image-to-image: preparing and encoding the init image (zero for text-to-image).</summary>
    public TimeSpan ImageEncode { get; init; }

    /// <summary>Everything but the models' Run calls: tokenizing, scheduling, guidance, copies, pixel conversion.</summary>
    public TimeSpan Overhead => Total - TextEncoderRuns - UNetRuns.Aggregate(TimeSpan.Zero, (a, b) => a + b) - VaeRun - ImageEncode;
}

/// <summary>A finished generation: the RGB pixels, the final latents, and what produced them.</summary>
public sealed class GenerationResult
{
    public required long Seed { get; init; }
    public required string Scheduler { get; init; }
    /// <summary>The denoising steps asked for (PNDM runs one UNet step more, as diffusers does: see <see cref="UNetCalls"/>).</summary>
    public required int Steps { get; init; }
    public required double GuidanceScale { get; init; }
    public required int Width { get; init; }
    public required int Height { get; init; }

    /// <summary>full or tiny: which decoder made the image.</summary>
    public required string Decoder { get; init; }

    /// <summary>The tile side (px) when the image was decoded tile by tile; null for one whole decode.</summary>
    public int? DecodeTileSize { get; init; }

    /// <summary>The UNet's batch, how it was conditioned (cfg, guidance-embedding, none) and how many times it ran.</summary>
    public required int UNetBatch { get; init; }
    public required string Conditioning { get; init; }
    public required int UNetCalls { get; init; }

    /// <summary>DeepCache's interval (1 = off) and schedule (null when off); <see cref="ShallowUNetCalls"/> of the UNet calls ran only the shallow branch.</summary>
    public int CacheInterval { get; init; } = 1;
    public string? CacheSchedule { get; init; }
    public int ShallowUNetCalls { get; init; }

    /// <summary>Image-to-image's strength (null for text-to-image): int(steps·strength) of the steps ran.</summary>
    public double? Strength { get; init; }

    /// <summary>
    /// Whether the same request gives the same image again: false only for image-to-image with an encoder that samples inside its
    /// graph with an unseeded generator (optimum ≤ 1.23's vae_encoder).
    /// </summary>
    public bool Reproducible { get; init; } = true;

    /// <summary>RGB, 8 bits per channel, rows top to bottom (HWC).</summary>
    public required byte[] Rgb { get; init; }

    /// <summary>The process's peak resident memory during this generation (null where the OS cannot restart the peak).</summary>
    public long? PeakMemoryBytes { get; init; }

    /// <summary>The final latents [1, 4, H/8, W/8] before VAE decoding.</summary>
    public required float[] Latents { get; init; }

    public required bool PromptTruncated { get; init; }
    public required GenerationTimings Timings { get; init; }

    /// <summary>The image as a file (<see cref="ImageFile"/>): PNG by default, with the generation parameters in a PNG when given.</summary>
    public Task<byte[]> EncodeAsync(string format = ImageFile.Png, int? quality = null, string? parameters = null, CancellationToken cancellationToken = default) =>
        ImageFile.EncodeAsync(Rgb, Width, Height, format, quality, parameters, cancellationToken);

    public Task<byte[]> ToPngAsync(CancellationToken cancellationToken = default) => EncodeAsync(cancellationToken: cancellationToken);
}
