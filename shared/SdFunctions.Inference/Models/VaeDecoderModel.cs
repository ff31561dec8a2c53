using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Models;

/// <summary>The VAE decoder at one static shape: [1, 4, h, w] latents → [1, 3, h·f, w·f] image in [−1, 1].</summary>
public sealed class VaeDecoderModel : IDisposable
{
    private readonly InferenceSession _session;
    private readonly OrtValue _input, _output;
    private readonly string[] _inputNames = ["latent_sample"];
    private readonly string[] _outputNames;

    public float[] Latents { get; }
    public float[] Image { get; }
    public int Height { get; }
    public int Width { get; }
    public SessionLoadInfo LoadInfo { get; }

    public VaeDecoderModel(OnnxSessionFactory factory, ModelBundle bundle, int latentHeight, int latentWidth)
    {
        var model = bundle.VaeDecoder;
        var inputInfo = model.FindInput("latent_sample")!;
        int channels = (int)(StaticShapes.FixedDim(inputInfo, 1) ?? 4);
        long[] inputShape = [1, channels, latentHeight, latentWidth];
        var overrides = new Dictionary<string, long>();
        StaticShapes.Bind(model, "latent_sample", inputShape, overrides);
        (_session, LoadInfo) = factory.Create("vae_decoder", model.Path, overrides);

        Height = latentHeight * bundle.VaeScaleFactor;
        Width = latentWidth * bundle.VaeScaleFactor;
        long[] outputShape = [1, 3, Height, Width];
        Latents = new float[channels * latentHeight * latentWidth];
        Image = new float[3 * Height * Width];
        _input = OrtValue.CreateTensorValueFromMemory(Latents, inputShape);
        _output = OrtValue.CreateTensorValueFromMemory(Image, outputShape);
        _outputNames = [ModelBundle.MainOutput(model, "sample").Name];
    }

    /// <summary>Decodes <see cref="Latents"/> (already divided by the scaling factor) into <see cref="Image"/>.</summary>
    public void Run(RunOptions runOptions) => _session.Run(runOptions, _inputNames, [_input], _outputNames, [_output]);

    public void Dispose()
    {
        _input.Dispose();
        _output.Dispose();
        _session.Dispose();
    }
}
