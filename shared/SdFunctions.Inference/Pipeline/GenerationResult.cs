using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

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

    /// <summary>Everything but the three models' Run calls: tokenizing, scheduling, guidance, copies, pixel conversion.</summary>
    public TimeSpan Overhead => Total - TextEncoderRuns - UNetRuns.Aggregate(TimeSpan.Zero, (a, b) => a + b) - VaeRun;
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

    /// <summary>RGB, 8 bits per channel, rows top to bottom (HWC).</summary>
    public required byte[] Rgb { get; init; }

    /// <summary>The process's peak resident memory during this generation (null where the OS cannot restart the peak).</summary>
    public long? PeakMemoryBytes { get; init; }

    /// <summary>The final latents [1, 4, H/8, W/8] before VAE decoding.</summary>
    public required float[] Latents { get; init; }

    public required bool PromptTruncated { get; init; }
    public required GenerationTimings Timings { get; init; }

    /// <summary>Encodes the image as PNG (ImageSharp 2.1, lossless).</summary>
    public Task WritePngAsync(Stream destination, CancellationToken cancellationToken = default) =>
        WritePngAsync(destination, Rgb, Width, Height, cancellationToken);

    /// <summary>Encodes RGB bytes (HWC) as an 8-bit RGB PNG.</summary>
    public static async Task WritePngAsync(Stream destination, byte[] rgb, int width, int height, CancellationToken cancellationToken = default)
    {
        using var image = Image.LoadPixelData<Rgb24>(rgb, width, height);
        await image.SaveAsPngAsync(destination, new PngEncoder { ColorType = PngColorType.Rgb, BitDepth = PngBitDepth.Bit8 }, cancellationToken);
    }

    public async Task<byte[]> ToPngAsync(CancellationToken cancellationToken = default)
    {
        using var stream = new MemoryStream();
        await WritePngAsync(stream, cancellationToken);
        return stream.ToArray();
    }
}
