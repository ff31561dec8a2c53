using System.Reflection;
using System.Security.Cryptography;
using System.Text.Json;
using Google.Protobuf;
using Onnx;
using SdFunctions.Inference.Bundle;
using SdFunctions.Optimizer.TokenMerging;

namespace SdFunctions.Optimizer;

/// <summary>What <c>sdf optimize</c> is asked to do.</summary>
public sealed record OptimizeOptions
{
    public required string ModelDirectory { get; init; }
    public required string OutputDirectory { get; init; }
    public double TomeRatio { get; init; }
    public int? Width { get; init; }
    public int? Height { get; init; }
    public int Batch { get; init; } = 2;
}

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
    public required long UnetBytesBefore { get; init; }
    public required long UnetBytesAfter { get; init; }

    public sealed record TomeBlock(string Block, int Tokens, int Merged);
    public const string FileName = "sdfunctions-optimize.json";
}

/// <summary>
/// Writes an optimized copy of a bundle: every component copied as it is except <c>unet/</c>, whose graph is
/// rewritten (Token Merging, the attention's zero additions removed, static shape) with its external weight
/// files carried along, plus a manifest.
/// </summary>
public static class BundleOptimizer
{
    public static async Task<OptimizeManifest> OptimizeAsync(OptimizeOptions options, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        var bundle = ModelBundle.Open(options.ModelDirectory);
        if (options.TomeRatio is < 0 or >= 1) throw new ArgumentException($"--tome-ratio must be in [0, 1); got {options.TomeRatio}.");
        if (options.Batch is not (1 or 2)) throw new ArgumentException($"--batch must be 1 or 2; got {options.Batch}.");
        int width = options.Width ?? bundle.DefaultWidth, height = options.Height ?? bundle.DefaultHeight;
        int multiple = bundle.VaeScaleFactor * 8;
        if (width <= 0 || height <= 0 || width % multiple != 0 || height % multiple != 0)
            throw new ArgumentException($"Width and height must be positive multiples of {multiple}; got {width}×{height}.");
        string output = Path.GetFullPath(options.OutputDirectory);
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new IOException($"{output} exists and is not empty; choose a new folder for the optimized bundle.");
        if (output.StartsWith(bundle.Directory + Path.DirectorySeparatorChar, StringComparison.Ordinal) || output == bundle.Directory)
            throw new IOException($"{output} is inside the source bundle; choose a folder outside it.");

        string sourceUnetDir = Path.GetDirectoryName(bundle.Unet.Path)!;
        progress?.Report("copying the other components");
        foreach (string file in Directory.EnumerateFiles(bundle.Directory, "*", SearchOption.AllDirectories))
        {
            ct.ThrowIfCancellationRequested();
            string relative = Path.GetRelativePath(bundle.Directory, file);
            if (relative.StartsWith("unet" + Path.DirectorySeparatorChar, StringComparison.Ordinal) || relative == OptimizeManifest.FileName) continue;
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
        var model = ModelProto.Parser.ParseFrom(await File.ReadAllBytesAsync(bundle.Unet.Path, ct));
        int latentH = height / bundle.VaeScaleFactor, latentW = width / bundle.VaeScaleFactor;
        var blocks = new List<OptimizeManifest.TomeBlock>();
        if (options.TomeRatio > 0)
        {
            var result = TokenMergingRewriter.Apply(model, new TokenMergingOptions
            {
                Ratio = options.TomeRatio, Batch = options.Batch, LatentHeight = latentH, LatentWidth = latentW,
            });
            blocks.AddRange(result.Blocks.Select(b => new OptimizeManifest.TomeBlock(b.Block, b.Tokens, b.Merged)));
            progress?.Report($"token merging: {blocks.Count} blocks, {blocks.Sum(b => b.Merged)} tokens merged per step");
        }
        int zeroAdds = ZeroAddRemoval.Apply(model.Graph);
        progress?.Report($"attention: removed {zeroAdds} additions of constant zeros (baddbmm beta=0)");
        var dims = StaticDims.ForUnet(model.Graph, options.Batch, latentH, latentW, bundle.Tokenizer.MaxLength);
        StaticDims.Apply(model.Graph, dims);

        string unetOut = Path.Combine(output, "unet");
        Directory.CreateDirectory(unetOut);
        foreach (string file in Directory.EnumerateFiles(sourceUnetDir).Where(f => Path.GetFileName(f) != "model.onnx"))
            File.Copy(file, Path.Combine(unetOut, Path.GetFileName(file))); // config.json and external weights, unchanged
        await File.WriteAllBytesAsync(Path.Combine(unetOut, "model.onnx"), model.ToByteArray(), ct);

        var manifest = new OptimizeManifest
        {
            Tool = "sdf optimize",
            ToolVersion = typeof(BundleOptimizer).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown",
            CreatedAt = DateTimeOffset.UtcNow,
            Source = bundle.Directory,
            SourceUnetSha256 = hashes,
            Options = options with { Width = width, Height = height },
            StaticDims = dims,
            TokenMerging = blocks,
            ZeroAttentionAddsRemoved = zeroAdds,
            UnetBytesBefore = DirectorySize(sourceUnetDir),
            UnetBytesAfter = DirectorySize(unetOut),
        };
        await File.WriteAllTextAsync(Path.Combine(output, OptimizeManifest.FileName),
            JsonSerializer.Serialize(manifest, new JsonSerializerOptions(JsonSerializerDefaults.Web) { WriteIndented = true }), ct);
        progress?.Report($"wrote {output}");
        return manifest;
    }

    private static long DirectorySize(string dir) => Directory.EnumerateFiles(dir).Sum(f => new FileInfo(f).Length);
}
