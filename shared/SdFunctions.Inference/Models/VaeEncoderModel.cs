using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Models;

/// <summary>
/// The image encoder (bundle's vae_encoder) at one static shape: [1, 3, H, W] image in [−1, 1] → latents [1, 4, H/f, W/f],
/// multiplied by the encoder's scaling factor, which is what image-to-image denoises from. How the latents come out of
/// the graph depends on its export (<see cref="VaeEncoderKind"/>): a Gaussian's parameters are sampled here with the caller's
/// ε (seeded, reproducible); an older export samples inside the graph with an unseeded generator (not reproducible).
/// </summary>
public sealed class VaeEncoderModel : IDisposable
{
    private readonly InferenceSession _session;
    private readonly OrtValue _input, _output;
    private readonly string[] _inputNames = ["sample"];
    private readonly string[] _outputNames;
    private readonly float[] _raw;

    public VaeEncoderComponent Component { get; }
    public VaeEncoderKind Kind => Component.Kind;
    public float[] Image { get; }
    public int LatentHeight { get; }
    public int LatentWidth { get; }
    public int LatentChannels { get; } = 4;
    public SessionLoadInfo LoadInfo { get; }

    public VaeEncoderModel(OnnxSessionFactory factory, ModelBundle bundle, VaeEncoderComponent component, int height, int width)
    {
        Component = component;
        var model = component.Model;
        long[] inputShape = [1, 3, height, width];
        var overrides = new Dictionary<string, long>();
        StaticShapes.Bind(model, "sample", inputShape, overrides);
        (_session, LoadInfo) = factory.Create("vae_encoder", model.Path, overrides);

        LatentHeight = height / bundle.VaeScaleFactor;
        LatentWidth = width / bundle.VaeScaleFactor;
        int outputChannels = Kind == VaeEncoderKind.Parameters ? 2 * LatentChannels : LatentChannels;
        Image = new float[3 * height * width];
        _raw = new float[outputChannels * LatentHeight * LatentWidth];
        _input = OrtValue.CreateTensorValueFromMemory(Image, inputShape);
        _output = OrtValue.CreateTensorValueFromMemory(_raw, [1, outputChannels, LatentHeight, LatentWidth]);
        _outputNames = [component.Output.Name];
    }

    /// <summary>What the graph returned for the last <see cref="Run"/>: latents, or concat(mean, logvar) for <see cref="VaeEncoderKind.Parameters"/>.</summary>
    public ReadOnlySpan<float> RawOutput => _raw;

    /// <summary>Runs the graph on <see cref="Image"/>.</summary>
    public void Run(RunOptions runOptions) => _session.Run(runOptions, _inputNames, [_input], _outputNames, [_output]);

    /// <summary>
    /// Encodes <see cref="Image"/> into scaled latents: scaling·(mean + std·ε) with std = exp(½·clamp(logvar, −30, 20)) (diffusers'
    /// DiagonalGaussianDistribution.sample) for a parameters export, else scaling·(the graph's latents). <paramref name="epsilon"/>
    /// is read only by a parameters export.
    /// </summary>
    public void Encode(ReadOnlySpan<float> epsilon, Span<float> latents, RunOptions runOptions)
    {
        Run(runOptions);
        int n = LatentChannels * LatentHeight * LatentWidth;
        float scaling = Component.ScalingFactor;
        if (Kind != VaeEncoderKind.Parameters)
        {
            for (int i = 0; i < n; i++) latents[i] = scaling * _raw[i];
            return;
        }
        for (int i = 0; i < n; i++)
        {
            float std = MathF.Exp(0.5f * Math.Clamp(_raw[n + i], -30f, 20f));
            latents[i] = scaling * (_raw[i] + std * epsilon[i]);
        }
    }

    /// <summary>RGB bytes (HWC) → <see cref="Image"/> as diffusers' VaeImageProcessor.preprocess: x/255·2 − 1, NCHW.</summary>
    public void SetImage(ReadOnlySpan<byte> rgb)
    {
        int plane = Image.Length / 3;
        if (rgb.Length != plane * 3) throw new ArgumentException($"expected {plane * 3} RGB bytes, got {rgb.Length}", nameof(rgb));
        for (int p = 0; p < plane; p++)
            for (int c = 0; c < 3; c++)
                Image[c * plane + p] = rgb[p * 3 + c] / 255f * 2f - 1f;
    }

    public void Dispose()
    {
        _input.Dispose();
        _output.Dispose();
        _session.Dispose();
    }
}
