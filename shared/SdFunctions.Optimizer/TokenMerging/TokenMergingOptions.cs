namespace SdFunctions.Optimizer.TokenMerging;

/// <summary>Token Merging for SD as tomesd defines it (its defaults), for one static UNet shape.</summary>
public sealed record TokenMergingOptions
{
    /// <summary>Share of a block's tokens merged away (tomesd's ratio): r = floor(N · ratio).</summary>
    public double Ratio { get; init; } = 0.5;

    /// <summary>The dst-token grid: one dst per Sx × Sy cell (tomesd's stride).</summary>
    public int Sx { get; init; } = 2;
    public int Sy { get; init; } = 2;

    /// <summary>Merge only in blocks whose resolution is at most this many times smaller than the latents (1: full resolution only).</summary>
    public int MaxDownsample { get; init; } = 1;

    /// <summary>Which sub-layers run on merged tokens (tomesd's merge_attn, merge_crossattn, merge_mlp; its default is self-attention only).</summary>
    public bool MergeAttn { get; init; } = true;
    public bool MergeCrossAttn { get; init; }
    public bool MergeMlp { get; init; }

    /// <summary>
    /// Null: each cell's dst is its top-left token (tomesd's use_rand=False). A seed: a random token per cell, drawn once
    /// from this seed and fixed in the graph (tomesd draws anew on every call; a static graph cannot).
    /// </summary>
    public int? RandomDstSeed { get; init; }

    /// <summary>The static shape the rewritten UNet is for: batch and latent height × width.</summary>
    public required int Batch { get; init; }
    public required int LatentHeight { get; init; }
    public required int LatentWidth { get; init; }
}
