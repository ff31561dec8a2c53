using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// Each model wrapper (static shapes, pre-allocated buffers) against the PyTorch outputs. The fixtures'
/// README measured ORT vs PyTorch at ≤ 9e-6; we allow 1e-4 max abs.
/// </summary>
public class ModelTests
{
    private const double Tolerance = 1e-4;
    private static readonly OnnxSessionFactory Factory = new(TinyPipelineFixture.CachedSessions, NullLogger.Instance);

    [Fact]
    public void TextEncoderMatchesTransformers()
    {
        var bundle = ModelBundle.Open(Fixtures.TinySd);
        using var encoder = new TextEncoderModel(Factory, bundle, 77);
        using var run = new RunOptions();
        long[] ids = Fixtures.Longs("text_encoder", "input_ids");
        float[] expected = Fixtures.Floats("text_encoder", "last_hidden_state");
        Assert.Equal(32, encoder.HiddenSize);
        for (int p = 0; p < 3; p++)
        {
            int[] promptIds = ids.Skip(p * 77).Take(77).Select(i => (int)i).ToArray();
            float[] actual = encoder.Encode(promptIds, run);
            Close.AllClose(expected.AsSpan(p * 77 * 32, 77 * 32), actual, Tolerance, $"last_hidden_state[{p}]");
        }
    }

    [Theory]
    [InlineData("unet", "case0", 32, 32)]
    [InlineData("unet", "case1", 24, 40)]
    [InlineData("unet-float-timestep", "case0", 32, 32)]
    [InlineData("unet-float-timestep", "case1", 24, 40)]
    public void UNetMatchesDiffusersForBothTimestepTypes(string folder, string @case, int h, int w)
    {
        string dir = folder == "unet" ? Fixtures.TinySd : FloatTimestepBundle.Value;
        var bundle = ModelBundle.Open(dir);
        using var unet = new UNetModel(Factory, bundle, 2, h, w, 77, 32);
        using var run = new RunOptions();
        Assert.Equal(folder == "unet", unet.IntegerTimestep);

        Fixtures.Floats("unet", $"{@case}/sample").CopyTo(unet.Sample, 0);
        Fixtures.Floats("unet", $"{@case}/encoder_hidden_states").CopyTo(unet.EncoderHiddenStates, 0);
        long t = Fixtures.Longs("unet", $"{@case}/timestep")[0];
        unet.Run(t, run);
        Close.AllClose(Fixtures.Floats("unet", $"{@case}/out_sample"), unet.Output, Tolerance, $"{folder} {@case} out_sample");

        // The buffers are reused: a second run on other inputs gives that input's answer, not a stale one.
        unet.Run(0, run);
        Assert.True(Close.MaxAbs(Fixtures.Floats("unet", $"{@case}/out_sample"), unet.Output) > 1e-3);
    }

    [Fact]
    public void VaeDecoderMatchesDiffusers()
    {
        var bundle = ModelBundle.Open(Fixtures.TinySd);
        using var vae = new VaeDecoderModel(Factory, bundle, 32, 32);
        using var run = new RunOptions();
        Fixtures.Floats("vae", "decoder/latent_sample").CopyTo(vae.Latents, 0);
        vae.Run(run);
        Assert.Equal((256, 256), (vae.Height, vae.Width));
        Close.AllClose(Fixtures.Floats("vae", "decoder/sample"), vae.Image, Tolerance, "vae decoder sample");
    }

    /// <summary>A copy of the tiny bundle whose unet/ is the older exporter's float-timestep UNet with external weights.</summary>
    internal static readonly Lazy<string> FloatTimestepBundle = new(() =>
    {
        string dir = Fixtures.CopyTinySd();
        Directory.Delete(Path.Combine(dir, "unet"), recursive: true);
        Directory.Move(Path.Combine(dir, "unet-float-timestep"), Path.Combine(dir, "unet"));
        return dir;
    });
}
