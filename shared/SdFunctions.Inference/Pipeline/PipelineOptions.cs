using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Pipeline;

/// <summary>How a pipeline is loaded: its one static image size and the ONNX Runtime settings.</summary>
public sealed record PipelineOptions
{
    /// <summary>Image size the sessions are compiled for; null = the bundle's native size (512 for SD 1.x).</summary>
    public int? Width { get; init; }
    public int? Height { get; init; }

    public SessionSettings Session { get; init; } = new();

    /// <summary>
    /// The decoder requests get when they name none, loaded with the pipeline (others load when first asked for):
    /// full or tiny; null = the full VAE when the bundle has one.
    /// </summary>
    public string? DefaultDecoder { get; init; }

    /// <summary>The tile side (px) for tiled decodes whose request names none; null = the VAE config's sample_size, as diffusers.</summary>
    public int? DecodeTileSize { get; init; }

    /// <summary>
    /// Bytes the process should stay under (null = no budget): the pipeline measures its models at load and picks how the
    /// full VAE decodes and which arenas are released (see <see cref="MemoryPlan"/>).
    /// </summary>
    public long? MemoryBudget { get; init; }

    /// <summary>
    /// Run each model once at load time. The first runs after load are 2–4× slower (weights paging in,
    /// arena growth); paying that at load keeps it off the first user's request.
    /// </summary>
    public bool WarmUp { get; init; } = true;

    /// <summary>
    /// Null when a <paramref name="width"/>×<paramref name="height"/> image fits in this machine's memory, else why not. The
    /// bound is SD 1.x's largest tensor: the first self-attention's scores, batch 2 × 8 heads × (latent pixels)² floats
    /// (1.1 GB at 512², 17 GB at 1024²), which grows with the fourth power of the side and must fit in the available memory.
    /// </summary>
    public static string? MemoryNeededFor(int? width, int? height, long? availableBytes = null)
    {
        if (width is not > 0 || height is not > 0) return null; // the model's native size, or a size the pipeline refuses itself
        long available = availableBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        double tokens = (double)(width.Value / 8) * (height.Value / 8);
        double needed = 2 * 8 * tokens * tokens * sizeof(float);
        if (needed <= available) return null;
        int side = (int)(Math.Sqrt(Math.Sqrt(available / (2.0 * 8 * sizeof(float)))) * 8) / 64 * 64;
        return $"{width}×{height} needs about {needed / 1e9:N0} GB for its first attention layer (batch 2 × 8 heads × ({width}/8 · {height}/8)² floats); " +
            $"this machine has {available / 1e9:N0} GB, enough for about {side}×{side} at most.";
    }
}
