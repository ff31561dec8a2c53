using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Models;

/// <summary>
/// An image decoder (the full VAE or TAESD) at one static shape: [1, 4, h, w] latents → [1, 3, h·f, w·f] image in about
/// [−1, 1]. <see cref="Decode"/> divides by the decoder's own scaling factor first.
/// </summary>
public sealed class VaeDecoderModel : IImageDecoder
{
    private readonly InferenceSession _session;
    private readonly OrtValue _input, _output;
    private readonly string[] _inputNames = ["latent_sample"];
    private readonly string[] _outputNames;
    private readonly int _latentHeight, _latentWidth;

    public DecoderComponent Component { get; }
    public float[] Latents { get; }
    public float[] Image { get; }
    public int Height { get; }
    public int Width { get; }
    public SessionLoadInfo LoadInfo { get; }

    public VaeDecoderModel(OnnxSessionFactory factory, ModelBundle bundle, int latentHeight, int latentWidth)
        : this(factory, bundle, bundle.Decoders[0], latentHeight, latentWidth) { }

    public VaeDecoderModel(OnnxSessionFactory factory, ModelBundle bundle, DecoderComponent component, int latentHeight, int latentWidth)
    {
        Component = component;
        (_latentHeight, _latentWidth) = (latentHeight, latentWidth);
        var model = component.Model;
        var inputInfo = model.FindInput("latent_sample")!;
        int channels = (int)(StaticShapes.FixedDim(inputInfo, 1) ?? 4);
        long[] inputShape = [1, channels, latentHeight, latentWidth];
        var overrides = new Dictionary<string, long>();
        StaticShapes.Bind(model, "latent_sample", inputShape, overrides);
        (_session, LoadInfo) = factory.Create(component.Folder, model.Path, overrides);

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

    /// <summary>Divides the pipeline's final latents by this decoder's scaling factor and decodes them into <see cref="Image"/>.</summary>
    public void Decode(ReadOnlySpan<float> latents, RunOptions runOptions)
    {
        float scaling = Component.ScalingFactor;
        for (int k = 0; k < latents.Length; k++) Latents[k] = latents[k] / scaling;
        Run(runOptions);
    }

    public string Name => Component.Name;
    public int? TileSize => null;

    public byte[] DecodeToRgb(ReadOnlySpan<float> latents, int latentHeight, int latentWidth, RunOptions runOptions)
    {
        if (latentHeight != _latentHeight || latentWidth != _latentWidth)
            throw new ArgumentException($"This decoder is compiled for {_latentHeight}×{_latentWidth} latents; got {latentHeight}×{latentWidth}.", nameof(latents));
        Decode(latents, runOptions);
        return Pipeline.StableDiffusionPipeline.ToRgb8(Image, Height, Width);
    }

    public string Describe(int latentHeight, int latentWidth) => "whole";

    public void Dispose()
    {
        _input.Dispose();
        _output.Dispose();
        _session.Dispose();
    }
}
