using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

/// <summary>The tiny decoder (diffusers AutoencoderTiny, TAESD) against reference/taesd.json, beside the VAE or as the VAE.</summary>
public class TaesdTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static PipelineOptions Options(string? decoder = null) =>
        new() { WarmUp = false, Session = TinyPipelineFixture.CachedSessions, DefaultDecoder = decoder };

    [Fact]
    public void ABundleWithTaesdBesideItsVaeOffersBothDecoders()
    {
        var bundle = ModelBundle.Open(Fixtures.TinySdWithTaesd);
        Assert.Equal(["full", "tiny"], bundle.Decoders.Select(d => d.Name));
        Assert.Equal(0.18215f, bundle.Decoders[0].ScalingFactor);
        Assert.Equal(1.0f, bundle.Decoders[1].ScalingFactor); // AutoencoderTiny's scaling_factor
        Assert.Equal("taesd_decoder", bundle.Decoders[1].Folder);
        Assert.Equal(["full"], ModelBundle.Open(Fixtures.TinySd).Decoders.Select(d => d.Name));
    }

    [Fact]
    public void DecodeMatchesAutoencoderTiny()
    {
        var bundle = ModelBundle.Open(Fixtures.TinySdWithTaesd);
        var factory = new OnnxSessionFactory(TinyPipelineFixture.CachedSessions, NullLogger.Instance);
        using var decoder = new VaeDecoderModel(factory, bundle, bundle.Decoders.Single(d => d.Name == "tiny"), 32, 32);
        using var run = new RunOptions();
        decoder.Decode(Fixtures.Floats("taesd", "decoder/latent_sample"), run); // scaling 1.0: the latents as they are
        Close.AllClose(Fixtures.Floats("taesd", "decoder/sample"), decoder.Image, 1e-4, "TAESD decode");
        output.WriteLine($"TAESD decode max abs {Close.MaxAbs(Fixtures.Floats("taesd", "decoder/sample"), decoder.Image):E2}");
    }

    /// <summary>StableDiffusionPipeline with the tiny decoder as its VAE: DDIM, 10 steps, guidance 7.5 (taesd.json pipe/*).</summary>
    [Theory]
    [InlineData("beside the VAE"), InlineData("as the VAE")]
    public async Task PipelineWithTheTinyDecoderMatchesDiffusers(string layout)
    {
        string dir = layout == "beside the VAE" ? Fixtures.TinySdWithTaesd : TinySdWithTaesdAsVae();
        using var pipeline = await StableDiffusionPipeline.LoadAsync(dir, Options());
        var result = await pipeline.GenerateAsync(new GenerationRequest
        {
            Prompt = "a photo of an astronaut riding a horse on mars", NegativePrompt = "", GuidanceScale = 7.5, Steps = 10, Scheduler = "ddim",
            Decoder = "tiny", InitialLatents = Fixtures.Floats("taesd", "pipe/initial_latents"),
        });
        Assert.Equal("tiny", result.Decoder);
        Close.AllClose(Fixtures.Floats("taesd", "pipe/final_latents"), result.Latents, 1e-3, "final latents");
        byte[] expected = Fixtures.Pixels(Path.Combine(Fixtures.Reference, "taesd_pipeline.png"));
        Assert.True(Close.MaxLevels(expected, result.Rgb) <= 1, $"a pixel channel differs by {Close.MaxLevels(expected, result.Rgb)} levels");
        output.WriteLine($"TAESD pipeline ({layout}): final latents max abs {Close.MaxAbs(Fixtures.Floats("taesd", "pipe/final_latents"), result.Latents):E2}, worst pixel {Close.MaxLevels(expected, result.Rgb)} levels");
    }

    [Fact]
    public async Task TheFullVaeIsTheDefaultAndEachDecoderMakesItsOwnImage()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySdWithTaesd, Options());
        Assert.Equal("full", pipeline.DefaultDecoder);
        Assert.DoesNotContain(pipeline.Sessions, s => s.Component == "taesd_decoder"); // loaded when first asked for
        var request = new GenerationRequest { Prompt = "a castle", Steps = 3, Seed = 4 };
        var full = await pipeline.GenerateAsync(request);
        var tiny = await pipeline.GenerateAsync(request with { Decoder = "tiny" });
        Assert.Equal(("full", "tiny"), (full.Decoder, tiny.Decoder));
        Assert.Equal(full.Latents, tiny.Latents); // the decoder does not change the denoising
        Assert.NotEqual(full.Rgb, tiny.Rgb);
        Assert.Equal(tiny.Rgb, await pipeline.DecodeLatentsAsync(full.Latents, "tiny"));
        Assert.Contains(pipeline.Sessions, s => s.Component == "taesd_decoder");
    }

    [Fact]
    public async Task ABundleWhoseVaeIsTinyOffersOnlyTiny()
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(TinySdWithTaesdAsVae(), Options());
        Assert.Equal(["tiny"], pipeline.SupportedDecoders);
        var e = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() =>
            pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 1, Decoder = "full" }));
        Assert.Equal("decoder", e.ParamName);
        Assert.Contains("tiny", e.Message);
        await Assert.ThrowsAsync<ModelBundleException>(() => StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, Options("tiny")));
    }

    private static readonly Lazy<string> TinyAsVae = new(() =>
    {
        string dir = Fixtures.CopyTinySd();
        Directory.Delete(Path.Combine(dir, "vae_decoder"), recursive: true);
        Fixtures.CopyFolder(Path.Combine(Fixtures.TinyTaesd, "vae_decoder"), Path.Combine(dir, "vae_decoder"));
        return dir;
    });

    private static string TinySdWithTaesdAsVae() => TinyAsVae.Value;
}
