using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// The tiled VAE decode against diffusers' <c>AutoencoderKL.tiled_decode</c> on tiny-sd's VAE (reference/vae_tiled.json:
/// tile 128 px = 16 latent px, overlap 0.25): every raw tile, and the blended image for a square and a non-square latent.
/// </summary>
public class TiledDecodeTests(Xunit.Abstractions.ITestOutputHelper output)
{
    // The untiled ONNX decode matches PyTorch within 6.3e-6 (reference README); blending adds nothing but float rounding.
    private const double Tolerance = 2e-5;

    private static readonly OnnxSessionFactory Factory = new(TinyPipelineFixture.CachedSessions, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);

    [Theory]
    [InlineData("c0", 32, 32)]
    [InlineData("c1", 24, 40)]
    public void TiledDecodeMatchesDiffusers(string @case, int latentHeight, int latentWidth)
    {
        var bundle = ModelBundle.Open(Fixtures.TinySd);
        using var decoder = new TiledVaeDecoder(Factory, bundle, bundle.Decoders[0], tileSize: 128);
        using var run = new RunOptions();
        var tiles = new List<(int Row, int Col, float[] Pixels)>();
        float[] image = decoder.Decode(Fixtures.Floats("vae_tiled", $"{@case}/latent_sample"), latentHeight, latentWidth, run,
            (i, j, pixels) => tiles.Add((i, j, pixels)));

        var meta = Fixtures.Meta("vae_tiled").GetProperty("cases").GetProperty(@case);
        Assert.Equal(meta.GetProperty("tiles").GetArrayLength(), tiles.Count);
        Assert.Equal(meta.GetProperty("tile_starts_rows").EnumerateArray().Select(e => e.GetInt32()), tiles.Select(t => t.Row).Distinct());
        Assert.Equal(meta.GetProperty("tile_starts_cols").EnumerateArray().Select(e => e.GetInt32()), tiles.Select(t => t.Col).Distinct());
        foreach (var (row, col, pixels) in tiles)
            if (Fixtures.Has("vae_tiled", $"{@case}/tile_{row}_{col}"))
                Close.AllClose(Fixtures.Floats("vae_tiled", $"{@case}/tile_{row}_{col}"), pixels, Tolerance, $"{@case} tile ({row}, {col})");
        Close.AllClose(Fixtures.Floats("vae_tiled", $"{@case}/tiled"), image, Tolerance, $"{@case} tiled");
        output.WriteLine($"{@case}: {tiles.Count} tiles, max abs vs diffusers {Close.MaxAbs(Fixtures.Floats("vae_tiled", $"{@case}/tiled"), image):E2}");
        // Tiling is not the untiled decode (per-tile GroupNorm): the comparison above would catch a plain decode.
        Assert.True(Close.MaxAbs(Fixtures.Floats("vae_tiled", $"{@case}/untiled"), image) > 0.1);
    }

    [Fact]
    public void LatentsNoLargerThanATileAreDecodedWhole()
    {
        var bundle = ModelBundle.Open(Fixtures.TinySd);
        using var decoder = new TiledVaeDecoder(Factory, bundle, bundle.Decoders[0], tileSize: 256);
        using var run = new RunOptions();
        int calls = 0;
        float[] image = decoder.Decode(Fixtures.Floats("vae_tiled", "c0/latent_sample"), 32, 32, run, (_, _, _) => calls++);
        Assert.Equal(0, calls);
        Close.AllClose(Fixtures.Floats("vae_tiled", "c0/untiled"), image, Tolerance, "c0 whole");
    }

    [Theory]
    [InlineData(100)]
    [InlineData(8)]
    public void ATileSizeThatIsNotWholeLatentsIsRefused(int tileSize)
    {
        var bundle = ModelBundle.Open(Fixtures.TinySd);
        Assert.Throws<ArgumentOutOfRangeException>(() => new TiledVaeDecoder(Factory, bundle, bundle.Decoders[0], tileSize));
    }
}
