using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Models;

/// <summary>
/// The full VAE decoder run tile by tile, as diffusers' <c>AutoencoderKL.tiled_decode</c> (v0.24): latent tiles of
/// <c>tile/8</c> px starting every <c>tile/8·(1−overlap)</c> px, each decoded on its own, each blended in place with the
/// already-blended tile above and to its left over <c>tile·overlap</c> image px (linear ramps), cropped to
/// <c>tile·(1−overlap)</c> px and put side by side. Only a tile's activations are alive at a time, so a large image decodes
/// in the memory of a small one. Latents no larger than a tile are decoded whole, as diffusers does. One session with free
/// height and width serves every tile shape (the edge tiles are smaller).
/// </summary>
public sealed class TiledVaeDecoder : IImageDecoder
{
    private readonly InferenceSession _session;
    private readonly string[] _inputNames = ["latent_sample"];
    private readonly string[] _outputNames;
    private readonly int _channels, _scale;

    public DecoderComponent Component { get; }

    /// <summary>Tile side in image pixels (diffusers' tile_sample_min_size); the latent tile is this over the VAE's scale factor.</summary>
    public int TileSize { get; }

    public double OverlapFactor { get; }

    public TiledVaeDecoder(OnnxSessionFactory factory, ModelBundle bundle, DecoderComponent component, int tileSize, double overlapFactor = 0.25)
    {
        if (tileSize % bundle.VaeScaleFactor != 0 || tileSize < 2 * bundle.VaeScaleFactor)
            throw new ArgumentOutOfRangeException(nameof(tileSize), tileSize, $"The tile size must be a multiple of {bundle.VaeScaleFactor} pixels, at least {2 * bundle.VaeScaleFactor}.");
        if (overlapFactor is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(overlapFactor), overlapFactor, "The overlap is a fraction in [0, 1).");
        Component = component;
        TileSize = tileSize;
        OverlapFactor = overlapFactor;
        _scale = bundle.VaeScaleFactor;
        var model = component.Model;
        var input = model.FindInput("latent_sample")!;
        _channels = (int)(StaticShapes.FixedDim(input, 1) ?? 4);
        // Batch and channels static; height and width free, for the edge tiles.
        var overrides = new Dictionary<string, long>();
        if (input.Dims[0].Param is { } batch) overrides[batch] = 1;
        if (input.Dims[1].Param is { } channels) overrides[channels] = _channels;
        (_session, _) = factory.Create(component.Folder, model.Path, overrides);
        _outputNames = [ModelBundle.MainOutput(model, "sample").Name];
    }

    /// <summary>Divides the pipeline's final latents by the decoder's scaling factor and decodes them (see <see cref="Decode"/>).</summary>
    public string Name => Component.Name;
    int? IImageDecoder.TileSize => TileSize;

    public byte[] DecodeToRgb(ReadOnlySpan<float> latents, int latentHeight, int latentWidth, RunOptions runOptions) =>
        Pipeline.StableDiffusionPipeline.ToRgb8(DecodeLatents(latents, latentHeight, latentWidth, runOptions), latentHeight * _scale, latentWidth * _scale);

    /// <summary>How many tiles a decode of that size takes (0: no side exceeds a tile, so it decodes whole).</summary>
    public int TileCount(int latentHeight, int latentWidth)
    {
        int latentTile = TileSize / _scale;
        if (latentHeight <= latentTile && latentWidth <= latentTile) return 0;
        int stride = (int)(latentTile * (1 - OverlapFactor));
        return (latentHeight + stride - 1) / stride * ((latentWidth + stride - 1) / stride);
    }

    public string Describe(int latentHeight, int latentWidth)
    {
        int tiles = TileCount(latentHeight, latentWidth);
        return tiles == 0 ? $"whole (no side exceeds the {TileSize} px tile)" : $"{tiles} tiles of {TileSize} px";
    }

    public float[] DecodeLatents(ReadOnlySpan<float> latents, int latentHeight, int latentWidth, RunOptions runOptions, Action<int, int, float[]>? onTile = null)
    {
        var z = new float[latents.Length];
        for (int k = 0; k < z.Length; k++) z[k] = latents[k] / Component.ScalingFactor;
        return Decode(z, latentHeight, latentWidth, runOptions, onTile);
    }

    /// <summary>
    /// Decodes <paramref name="z"/> [1, C, h, w] (already divided by the scaling factor) into [1, 3, 8h, 8w]. Calls
    /// <paramref name="onTile"/> with each raw tile decode (before blending) and its latent origin, for tests.
    /// </summary>
    public float[] Decode(ReadOnlySpan<float> z, int latentHeight, int latentWidth, RunOptions runOptions, Action<int, int, float[]>? onTile = null)
    {
        if (z.Length != _channels * latentHeight * latentWidth)
            throw new ArgumentException($"Expected {_channels}×{latentHeight}×{latentWidth} latents, got {z.Length} floats.", nameof(z));
        int latentTile = TileSize / _scale;
        if (latentHeight <= latentTile && latentWidth <= latentTile) return Run(z.ToArray(), latentHeight, latentWidth, runOptions);

        int overlap = (int)(latentTile * (1 - OverlapFactor)); // diffusers' int(): truncation
        int blend = (int)(TileSize * OverlapFactor);
        int rowLimit = TileSize - blend;
        var rows = new List<List<Tile>>();
        for (int i = 0; i < latentHeight; i += overlap)
        {
            var row = new List<Tile>();
            for (int j = 0; j < latentWidth; j += overlap)
            {
                int th = Math.Min(latentTile, latentHeight - i), tw = Math.Min(latentTile, latentWidth - j);
                var tile = new Tile(Run(Crop(z, latentHeight, latentWidth, i, j, th, tw), th, tw, runOptions), th * _scale, tw * _scale);
                onTile?.Invoke(i, j, (float[])tile.Pixels.Clone());
                row.Add(tile);
            }
            rows.Add(row);
        }

        int height = latentHeight * _scale, width = latentWidth * _scale;
        var image = new float[3 * height * width];
        int top = 0;
        for (int r = 0; r < rows.Count; r++)
        {
            int left = 0, cropHeight = 0;
            for (int c = 0; c < rows[r].Count; c++)
            {
                var tile = rows[r][c];
                if (r > 0) BlendVertically(rows[r - 1][c], tile, blend);
                if (c > 0) BlendHorizontally(rows[r][c - 1], tile, blend);
                cropHeight = Math.Min(rowLimit, tile.Height);
                int cropWidth = Math.Min(rowLimit, tile.Width);
                for (int ch = 0; ch < 3; ch++)
                    for (int y = 0; y < cropHeight; y++)
                        tile.Pixels.AsSpan((ch * tile.Height + y) * tile.Width, cropWidth)
                            .CopyTo(image.AsSpan((ch * height + top + y) * width + left, cropWidth));
                left += cropWidth;
            }
            top += cropHeight;
        }
        return image;
    }

    /// <summary>A decoded tile, [3, Height, Width], blended in place as its neighbours are processed.</summary>
    private sealed record Tile(float[] Pixels, int Height, int Width);

    // b's first rows fade in from a's last rows (diffusers' blend_v; the extent is capped by both tiles' heights).
    private static void BlendVertically(Tile a, Tile b, int extent)
    {
        extent = Math.Min(extent, Math.Min(a.Height, b.Height));
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < extent; y++)
            {
                float wb = (float)((double)y / extent), wa = (float)(1 - (double)y / extent); // as torch: a double, cast once
                var above = a.Pixels.AsSpan((ch * a.Height + a.Height - extent + y) * a.Width, b.Width);
                var row = b.Pixels.AsSpan((ch * b.Height + y) * b.Width, b.Width);
                for (int x = 0; x < row.Length; x++) row[x] = above[x] * wa + row[x] * wb;
            }
    }

    // b's first columns fade in from a's last columns (diffusers' blend_h).
    private static void BlendHorizontally(Tile a, Tile b, int extent)
    {
        extent = Math.Min(extent, Math.Min(a.Width, b.Width));
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < b.Height; y++)
            {
                var leftRow = a.Pixels.AsSpan((ch * a.Height + y) * a.Width, a.Width);
                var row = b.Pixels.AsSpan((ch * b.Height + y) * b.Width, b.Width);
                for (int x = 0; x < extent; x++)
                    row[x] = leftRow[a.Width - extent + x] * (float)(1 - (double)x / extent) + row[x] * (float)((double)x / extent);
            }
    }

    private float[] Crop(ReadOnlySpan<float> z, int height, int width, int top, int left, int th, int tw)
    {
        var tile = new float[_channels * th * tw];
        for (int ch = 0; ch < _channels; ch++)
            for (int y = 0; y < th; y++)
                z.Slice((ch * height + top + y) * width + left, tw).CopyTo(tile.AsSpan((ch * th + y) * tw, tw));
        return tile;
    }

    private float[] Run(float[] latents, int latentHeight, int latentWidth, RunOptions runOptions)
    {
        var image = new float[3 * latentHeight * _scale * latentWidth * _scale];
        using var input = OrtValue.CreateTensorValueFromMemory(latents, [1, _channels, latentHeight, latentWidth]);
        using var output = OrtValue.CreateTensorValueFromMemory(image, [1, 3, latentHeight * _scale, latentWidth * _scale]);
        _session.Run(runOptions, _inputNames, [input], _outputNames, [output]);
        return image;
    }

    public void Dispose() => _session.Dispose();
}
