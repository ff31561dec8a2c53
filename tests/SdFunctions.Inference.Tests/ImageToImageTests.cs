using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;
using SdFunctions.Inference.Schedulers;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit.Abstractions;

namespace SdFunctions.Inference.Tests;

/// <summary>A pipeline on <see cref="Fixtures.TinySdWithParameterEncoder"/>, loaded once.</summary>
public sealed class ImageToImageFixture : IAsyncLifetime
{
    public string Bundle => Fixtures.TinySdWithParameterEncoder;
    public StableDiffusionPipeline Pipeline { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Pipeline = await StableDiffusionPipeline.LoadAsync(Bundle, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
    }

    public Task DisposeAsync()
    {
        Pipeline.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>Image-to-image against diffusers' StableDiffusionImg2ImgPipeline (reference/img2img.json: DDIM and Euler, strength 0.5 and 0.8).</summary>
public class ImageToImageTests(ImageToImageFixture fixture, ITestOutputHelper output) : IClassFixture<ImageToImageFixture>
{
    private const string Prompt = "a drawing of a green pokemon with red eyes";
    private const int Latent = 4 * 32 * 32;

    private static InitImage ReferenceImage() => new(Fixtures.Bytes("img2img", "init_image_uint8"), 256, 256) { SourceWidth = 256, SourceHeight = 256 };

    [Fact]
    public void TheEncoderKindIsReadFromTheGraph()
    {
        Assert.Equal(VaeEncoderKind.SampledInGraph, ModelBundle.Open(Fixtures.TinySd).Encoder!.Kind); // optimum 1.14: RandomNormalLike inside
        Assert.Equal(VaeEncoderKind.Parameters, ModelBundle.Open(fixture.Bundle).Encoder!.Kind);
        Assert.Equal(0.18215f, ModelBundle.Open(fixture.Bundle).Encoder!.ScalingFactor);
        Assert.Null(ModelBundle.Open(Fixtures.TinyLcm).Encoder);
    }

    [Fact]
    public void TheEncoderMatchesDiffusers()
    {
        var bundle = ModelBundle.Open(fixture.Bundle);
        using var encoder = new VaeEncoderModel(new OnnxSessionFactory(TinyPipelineFixture.CachedSessions, NullLogger.Instance), bundle, bundle.Encoder!, 256, 256);
        encoder.SetImage(Fixtures.Bytes("img2img", "init_image_uint8"));
        // Preprocessing is exact: uint8/255·2 − 1 as float32.
        Close.AllClose(Fixtures.Floats("img2img", "image_tensor"), encoder.Image, 0, "preprocessed image");
        using var run = new RunOptions();
        encoder.Run(run);
        double diff = Close.MaxAbs(Fixtures.Floats("img2img", "encoder_latent_parameters"), encoder.RawOutput);
        output.WriteLine($"encoder latent_parameters max abs {diff:E2}");
        // The reference README measured 1.28e-4 (torch's channels-last path on the pipeline's input plus ORT's own 8.8e-5).
        Assert.True(diff <= 2e-4, $"latent_parameters off by {diff:E2}");
    }

    [Theory]
    [InlineData("ddim_s05"), InlineData("euler_s08")]
    public async Task TheScaledSampleIsMeanPlusStdTimesEpsilon(string run)
    {
        var latents = await fixture.Pipeline.EncodeImageAsync(ReferenceImage(), Fixtures.Floats("img2img", $"{run}/encoder_eps"));
        // The encoder's 2e-4 times the 0.18215 scaling, and std·ε moves with logvar's error: 1e-4 covers both.
        Close.AllClose(Fixtures.Floats("img2img", $"{run}/init_latents"), latents, 1e-4, $"{run} init latents");
    }

    [Theory]
    [InlineData("ddim", "ddim_s05", 0.5), InlineData("ddim", "ddim_s08", 0.8), InlineData("euler", "euler_s05", 0.5), InlineData("euler", "euler_s08", 0.8)]
    public void AddNoiseStartsWhereDiffusersStarts(string scheduler, string run, double strength)
    {
        var s = SchedulerCatalog.Create(scheduler, fixture.Pipeline.Bundle.Scheduler);
        s.SetTimesteps(10);
        int begin = ImageStart.BeginIndex(10, strength);
        var expected = scheduler == "ddim" ? Fixtures.Longs("img2img", $"{run}/timesteps").Select(t => (double)t) : Fixtures.Floats("img2img", $"{run}/timesteps").Select(t => (double)t);
        Assert.Equal(expected, s.Timesteps.Skip(begin));
        var noised = new float[Latent];
        s.AddNoise(Fixtures.Floats("img2img", $"{run}/init_latents"), Fixtures.Floats("img2img", $"{run}/noise"), begin, noised);
        // float32 rounding only (Euler's σ ≈ 5 at t = 777 scales values to ~20): 1e-6 of the largest value.
        Close.RelClose(Fixtures.Floats("img2img", $"{run}/noised_latents"), noised, 1e-6, $"{run} noised latents");
    }

    [Theory]
    [InlineData("ddim", "ddim_s05", 0.5), InlineData("ddim", "ddim_s08", 0.8), InlineData("euler", "euler_s05", 0.5), InlineData("euler", "euler_s08", 0.8)]
    public async Task TheImageToImagePipelineMatchesDiffusers(string scheduler, string run, double strength)
    {
        var calls = new UNetCallRecorder();
        var result = await fixture.Pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = Prompt, NegativePrompt = "", GuidanceScale = 7.5, Steps = 10, Scheduler = scheduler, Strength = strength,
            InitImage = ReferenceImage(), EncoderNoise = Fixtures.Floats("img2img", $"{run}/encoder_eps"), InitialLatents = Fixtures.Floats("img2img", $"{run}/noise"),
        }, progress: null, calls);

        int runSteps = (int)(10 * strength);
        Assert.Equal(runSteps, calls.Timesteps.Count);
        Assert.Equal(runSteps, result.UNetCalls);
        Assert.Equal(strength, result.Strength);
        Assert.True(result.Reproducible);
        // The first UNet input is the noised encoding, scaled (Euler: /√(σ² + 1)); both rows get it.
        float[] firstInput = Fixtures.Floats("img2img", $"{run}/unet_input_per_step").AsSpan(0, 2 * Latent).ToArray();
        Close.AllClose(firstInput, calls.Samples[0], 1e-4, $"{run} first UNet input");
        Close.AllClose(Fixtures.Floats("img2img", $"{run}/final_latents"), result.Latents, 1e-3, $"{run} final latents");
        int levels = Close.MaxLevels(Fixtures.Bytes("img2img", $"{run}/image_uint8"), result.Rgb);
        output.WriteLine($"{run}: final latents max abs {Close.MaxAbs(Fixtures.Floats("img2img", $"{run}/final_latents"), result.Latents):E2}, worst pixel {levels} levels");
        Assert.True(levels <= 1, $"{run}: a pixel channel differs by {levels} levels from diffusers' image");
    }

    [Fact]
    public async Task ASeedGivesTheSameImageAgainAndStrengthOneIgnoresThePicture()
    {
        var request = new GenerationRequest { Prompt = Prompt, Steps = 4, Scheduler = "ddim", Seed = 11, InitImage = ReferenceImage(), Strength = 0.75 };
        var a = await fixture.Pipeline.GenerateAsync(request);
        var b = await fixture.Pipeline.GenerateAsync(request);
        Assert.Equal(a.Rgb, b.Rgb);
        Assert.Equal(3, a.UNetCalls);

        // At strength 1 every step runs, from the picture noised to the first timestep (751): it weighs less than at 0.75 (from 501).
        var black = new InitImage(new byte[256 * 256 * 3], 256, 256);
        var fromPicture = await fixture.Pipeline.GenerateAsync(request with { Strength = 1 });
        var fromBlack = await fixture.Pipeline.GenerateAsync(request with { Strength = 1, InitImage = black });
        var blackAtThreeQuarters = await fixture.Pipeline.GenerateAsync(request with { InitImage = black });
        Assert.Equal(4, fromPicture.UNetCalls);
        Assert.True(Close.MaxAbs(fromPicture.Latents, fromBlack.Latents) < Close.MaxAbs(a.Latents, blackAtThreeQuarters.Latents),
            "at strength 1 the picture should matter less than at 0.75");
    }

    [Fact]
    public async Task AnEncoderThatSamplesInsideItsGraphIsReportedNotReproducible()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        var request = new GenerationRequest { Prompt = Prompt, Steps = 2, Scheduler = "ddim", Seed = 5, InitImage = ReferenceImage(), Strength = 1 };
        var a = await pipeline.GenerateAsync(request);
        var b = await pipeline.GenerateAsync(request);
        Assert.False(a.Reproducible);
        Assert.NotEqual(a.Latents, b.Latents); // RandomNormalLike without a seed: the same request encodes differently
    }

    [Fact]
    public async Task BadImageRequestsNameTheirField()
    {
        var image = ReferenceImage();
        async Task<string?> Refused(GenerationRequest r) =>
            (await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => fixture.Pipeline.GenerateAsync(r))).ParamName;
        Assert.Equal("strength", await Refused(new GenerationRequest { Prompt = "x", Strength = 0.5 }));
        Assert.Equal("strength", await Refused(new GenerationRequest { Prompt = "x", InitImage = image, Strength = 0 }));
        Assert.Equal("strength", await Refused(new GenerationRequest { Prompt = "x", InitImage = image, Strength = 1.5 }));
        Assert.Equal("strength", await Refused(new GenerationRequest { Prompt = "x", InitImage = image, Strength = 0.05, Steps = 10 })); // int(0.5) = 0 steps
        Assert.Equal("image", await Refused(new GenerationRequest { Prompt = "x", InitImage = new InitImage(new byte[64 * 64 * 3], 64, 64) }));
        Assert.Equal("encoderNoise", await Refused(new GenerationRequest { Prompt = "x", InitImage = image, EncoderNoise = new float[3] }));
        using var lcm = await StableDiffusionPipeline.LoadAsync(Fixtures.TinyLcm, new PipelineOptions { WarmUp = false });
        var e = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() => lcm.GenerateAsync(new GenerationRequest { Prompt = "x", InitImage = image }));
        Assert.Equal("image", e.ParamName);
        Assert.Contains("vae_encoder", e.Message);
    }

    [Fact]
    public void PicturesAreDecodedAndFittedByTheStatedRule()
    {
        // 512×256 covers 256×256 at scale 1; the centre 256 columns (all blue) are kept, the red sides cropped.
        using var wide = new Image<Rgb24>(512, 256);
        for (int x = 0; x < 512; x++)
            for (int y = 0; y < 256; y++) wide[x, y] = x < 128 || x >= 384 ? new Rgb24(255, 0, 0) : new Rgb24(0, 0, 255);
        using var png = new MemoryStream();
        wide.SaveAsPng(png);
        var fitted = InitImage.Decode(png.ToArray(), 256, 256);
        Assert.True(fitted.Resized);
        Assert.Equal((512, 256, "image/png"), (fitted.SourceWidth, fitted.SourceHeight, fitted.SourceMediaType));
        Assert.All(Enumerable.Range(0, 256 * 256), p => Assert.Equal((0, 0, 255), (fitted.Rgb[3 * p], fitted.Rgb[3 * p + 1], fitted.Rgb[3 * p + 2])));

        using var jpeg = new MemoryStream();
        wide.SaveAsJpeg(jpeg);
        Assert.Equal("image/jpeg", InitImage.Decode(jpeg.ToArray(), 256, 256).SourceMediaType);
        using var webp = new MemoryStream();
        wide.SaveAsWebp(webp);
        Assert.Equal("image/webp", InitImage.Decode(webp.ToArray(), 256, 256).SourceMediaType);

        var same = InitImage.Decode(File.ReadAllBytes(Path.Combine(Fixtures.Reference, "img2img_init_image.png")), 256, 256);
        Assert.False(same.Resized);
        Assert.Equal(Fixtures.Bytes("img2img", "init_image_uint8"), same.Rgb);

        using var gif = new MemoryStream();
        wide.SaveAsGif(gif);
        Assert.Contains("PNG, JPEG or WebP", Assert.Throws<InvalidGenerationRequestException>(() => InitImage.Decode(gif.ToArray(), 256, 256)).Message);
        Assert.Equal("image", Assert.Throws<InvalidGenerationRequestException>(() => InitImage.Decode([1, 2, 3], 256, 256)).ParamName);
        byte[] truncated = png.ToArray()[..100];
        Assert.Equal("image", Assert.Throws<InvalidGenerationRequestException>(() => InitImage.Decode(truncated, 256, 256)).ParamName);
        using var huge = new Image<Rgb24>(InitImage.MaxSide + 1, 8);
        using var hugePng = new MemoryStream();
        huge.SaveAsPng(hugePng);
        Assert.Contains("at most", Assert.Throws<InvalidGenerationRequestException>(() => InitImage.Decode(hugePng.ToArray(), 256, 256)).Message);
    }
}
