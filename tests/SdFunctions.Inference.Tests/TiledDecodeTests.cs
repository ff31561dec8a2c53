using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Pipeline;
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

/// <summary><c>sdf decode</c>: saved latents to a PNG, whole or tiled, with the pixels diffusers' decode gives.</summary>
public class DecodeCommandTests
{
    private static async Task<(int Code, string Err)> Run(params string[] args)
    {
        var stderr = new StringWriter();
        int code = await SdFunctions.Cli.CliApp.RunAsync(args, new StringWriter(), stderr);
        return (code, stderr.ToString());
    }

    private static byte[] Expected(string name, int height, int width) =>
        SdFunctions.Inference.Pipeline.StableDiffusionPipeline.ToRgb8(Fixtures.Floats("vae_tiled", name), height, width);

    [Theory]
    [InlineData("c0", 256, 256, "--tiled", "9 tiles of 128 px", "tiled")]
    [InlineData("c1", 320, 192, "--tiled", "8 tiles of 128 px", "tiled")]
    [InlineData("c0", 256, 256, null, "whole", "untiled")]
    public async Task DecodeWritesThePixelsOfDiffusersDecode(string @case, int width, int height, string? tiled, string says, string reference)
    {
        string png = Fixtures.TempDirectory("decode") + ".png";
        string[] args = ["decode", "--model", Fixtures.TinySd, "--latents", Fixtures.FileOf("vae_tiled", $"{@case}/latents_unscaled"),
            "--width", $"{width}", "--height", $"{height}", "--out", png];
        if (tiled is not null) args = [.. args, tiled, "--tile-size", "128"];
        var (code, err) = await Run(args);
        Assert.True(code == 0, err);
        Assert.Contains(says, err);
        Assert.True(Close.MaxLevels(Expected($"{@case}/{reference}", height, width), Fixtures.Pixels(png)) <= 1, "within one level of diffusers");
    }

    [Fact]
    public async Task TheDefaultTileIsTheVaesSampleSize()
    {
        // tiny-sd's vae config has sample_size 256: a 256² image is one tile, decoded whole, as diffusers does.
        string png = Fixtures.TempDirectory("decode") + ".png";
        var (code, err) = await Run("decode", "--model", Fixtures.TinySd, "--latents", Fixtures.FileOf("vae_tiled", "c0/latents_unscaled"),
            "--width", "256", "--height", "256", "--tiled", "--out", png);
        Assert.True(code == 0, err);
        Assert.Contains("whole (no side exceeds the 256 px tile)", err);
        Assert.True(Close.MaxLevels(Expected("c0/untiled", 256, 256), Fixtures.Pixels(png)) <= 1);
    }

    [Fact]
    public async Task GenerateDecodesInTilesWhenAsked()
    {
        string png = Fixtures.TempDirectory("generate") + ".png";
        string[] args = ["generate", "--model", Fixtures.TinySd, "--prompt", "a fox", "--steps", "2", "--seed", "1", "--scheduler", "ddim", "--out", png];
        var (code, err) = await Run([.. args, "--tiled-decode", "--tile-size", "128"]);
        Assert.True(code == 0, err);
        Assert.Contains("decode (full, tiles of 128 px)", err);
        var (bad, badErr) = await Run([.. args, "--tile-size", "128"]);
        Assert.Equal(SdFunctions.Cli.CliApp.BadInput, bad);
        Assert.StartsWith("sdf: --tile-size: A tile size needs tiled decoding on", badErr);
    }

    [Theory]
    [InlineData("--width", "128", "holds 4096 floats; 128×256 needs 1×4×32×16 = 2048")]
    [InlineData("--width", "250", "is not a positive multiple of 8")]
    [InlineData("--tile-size", "128", "--tile-size 128 needs --tiled")]
    public async Task MistakesAreOneLine(string option, string value, string says)
    {
        var args = new Dictionary<string, string> { ["--width"] = "256", ["--height"] = "256" };
        args[option] = value;
        var (code, err) = await Run([.. new[] { "decode", "--model", Fixtures.TinySd, "--latents", Fixtures.FileOf("vae_tiled", "c0/latents_unscaled"),
            "--out", Fixtures.TempDirectory("decode") + ".png" }, .. args.SelectMany(kv => new[] { kv.Key, kv.Value })]);
        Assert.Equal(SdFunctions.Cli.CliApp.BadInput, code);
        Assert.Contains(says, err);
        Assert.Single(err.TrimEnd().Split('\n'));
    }
}

/// <summary>Tiled decoding as a generation option: the same latents, decoded as <see cref="TiledVaeDecoder"/> decodes them.</summary>
[Collection(TinyPipelineCollection.Name)]
public class TiledGenerationTests(TinyPipelineFixture fixture)
{
    private static GenerationRequest Request(bool? tiled, int? tileSize = null) => new()
    {
        Prompt = "a lighthouse", Steps = 2, Seed = 11, Scheduler = "ddim", TiledDecode = tiled, TileSize = tileSize,
    };

    [Fact]
    public async Task ATiledDecodeGivesTheTiledDecodersPixelsForTheSameLatents()
    {
        var whole = await fixture.Pipeline.GenerateAsync(Request(null));
        var tiled = await fixture.Pipeline.GenerateAsync(Request(true, 128));
        Assert.Equal(whole.Latents, tiled.Latents);
        Assert.Equal((null, 128), (whole.DecodeTileSize, tiled.DecodeTileSize));

        var bundle = fixture.Pipeline.Bundle;
        using var decoder = new TiledVaeDecoder(new OnnxSessionFactory(TinyPipelineFixture.CachedSessions, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance),
            bundle, bundle.Decoders[0], 128);
        using var run = new RunOptions();
        Assert.Equal(StableDiffusionPipeline.ToRgb8(decoder.DecodeLatents(tiled.Latents, 32, 32, run), 256, 256), tiled.Rgb);
        Assert.NotEqual(whole.Rgb, tiled.Rgb); // the seams differ from a whole decode
        Assert.True(Close.Psnr(whole.Rgb, tiled.Rgb) > 10, "still the same picture");

        // Without a tile size: the VAE's sample_size (256), which covers this 256² image: decoded whole.
        var defaultTile = await fixture.Pipeline.GenerateAsync(Request(true));
        Assert.Equal(256, defaultTile.DecodeTileSize);
        Assert.True(Close.MaxLevels(whole.Rgb, defaultTile.Rgb) <= 1, "a free-shape session rounds a little differently from the static one");
    }

    [Theory]
    [InlineData(null, 128, "tileSize")]
    [InlineData(true, 100, "tileSize")]
    [InlineData(true, 32, "tileSize")]
    public void BadTileSettingsAreRefusedBeforeRunning(bool? tiled, int tileSize, string parameter)
    {
        var e = Assert.Throws<InvalidGenerationRequestException>(() => fixture.Pipeline.Validate(Request(tiled, tileSize)));
        Assert.Equal(parameter, e.ParamName);
    }
}
