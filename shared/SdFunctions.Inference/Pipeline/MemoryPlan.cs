using Microsoft.ML.OnnxRuntime;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// How a pipeline stays under a memory budget, chosen at load from what was measured there: the resident memory once the
/// text encoder and the UNet have run (weights, the UNet's activation arena, the runtime), and the full VAE decoder's
/// activations per output pixel (from one decode of a 256² tile: SD 1.5's at 512² then predicts a whole decode 5 % high, where a
/// 128² tile predicted it 30 % low). Under a budget the text encoder and the decoders hand their
/// activation memory back after each run (they run once per image; the UNet keeps its arena, it runs every step), and the
/// full VAE decodes in tiles when a whole decode would not fit.
/// </summary>
/// <param name="Budget">Bytes the process should stay under; null = no budget (nothing released, whole decodes).</param>
/// <param name="DecodeTileSize">The tile side (px) the full VAE decodes with when a request names none; null = whole.</param>
/// <param name="ExpectedPeakBytes">What the plan expects a generation to peak at (null without a budget).</param>
/// <param name="Met">False when even the smallest tile leaves the expected peak over the budget (the plan is then the leanest there is).</param>
/// <param name="DecodeBytesPerPixel">The full VAE's activations per output pixel the plan used (measured, or the profile's estimate, <see cref="Bundle.ModelProfile.FullDecodeBytesPerPixel"/>).</param>
public sealed record MemoryPlan(long? Budget, int? DecodeTileSize, long? ExpectedPeakBytes, bool Met, double? DecodeBytesPerPixel = null)
{
    /// <summary>Tile sides tried from the largest down (diffusers' default for SD 1.x is 512).</summary>
    public static readonly IReadOnlyList<int> TileSizes = [512, 384, 256, 192, 128, 96, GenerationRequest.MinTileSize];

    public static MemoryPlan Unlimited { get; } = new(null, null, null, true);

    /// <summary>Whether the text encoder and the decoders release their activation memory after each run.</summary>
    public bool ReleaseArenas => Budget is not null;

    /// <summary>
    /// The plan for <paramref name="budget"/>: whole decodes when <paramref name="resident"/> plus a whole decode's activations
    /// fit, else the largest tile that fits (smaller than the image), else the smallest tile.
    /// </summary>
    public static MemoryPlan Choose(long budget, long resident, double decodeBytesPerPixel, int width, int height)
    {
        if (budget <= 0) throw new ArgumentOutOfRangeException(nameof(budget), budget, "The memory budget must be positive.");
        long Need(long pixels) => resident + (long)(decodeBytesPerPixel * pixels);
        long whole = Need((long)width * height);
        if (whole <= budget) return new MemoryPlan(budget, null, whole, true, decodeBytesPerPixel);
        var tiles = TileSizes.Where(t => t < Math.Max(width, height)).ToList();
        if (tiles.Count == 0) return new MemoryPlan(budget, null, whole, false, decodeBytesPerPixel); // the image is no larger than the smallest tile
        foreach (int tile in tiles)
            if (Need((long)Math.Min(tile, width) * Math.Min(tile, height)) is var need && need <= budget)
                return new MemoryPlan(budget, tile, need, true, decodeBytesPerPixel);
        int smallest = tiles[^1];
        return new MemoryPlan(budget, smallest, Need((long)Math.Min(smallest, width) * Math.Min(smallest, height)), false, decodeBytesPerPixel);
    }

    /// <summary>Run options for the models that release their arena after the run (ONNX Runtime's arena shrinkage).</summary>
    public static RunOptions ReleasingRunOptions()
    {
        var options = new RunOptions();
        options.AddRunConfigEntry("memory.enable_memory_arena_shrinkage", "cpu:0");
        return options;
    }

    /// <summary>"1.5GB", "1536MB", "800 MiB" or a byte count → bytes (GB = 10⁹, GiB = 2³⁰); throws <see cref="FormatException"/>.</summary>
    public static long ParseBytes(string text)
    {
        string s = text.Trim();
        int split = s.Length;
        while (split > 0 && char.IsLetter(s[split - 1])) split--;
        double? factor = s[split..].ToUpperInvariant() switch
        {
            "" or "B" => 1, "KB" => 1e3, "MB" => 1e6, "GB" => 1e9, "KIB" => 1 << 10, "MIB" => 1 << 20, "GIB" => 1 << 30, _ => null,
        };
        if (factor is null || !double.TryParse(s[..split].Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double value)
            || !double.IsFinite(value) || value <= 0)
            throw new FormatException($"'{text}' is not a positive size: a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. 1.5GB or 1536MiB, or a byte count.");
        return (long)(value * factor.Value);
    }
}
