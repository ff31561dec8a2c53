using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Optimizer.Quantization;

/// <summary>
/// INT8 QDQ for the VAE decoder, rewritten in place: its convolutions (all but conv_in, which reads the latents, and
/// conv_out, which writes the image) and its attention's linear layers, calibrated on the latents the float pipeline
/// decoded. At 512² the decoder's convolutions run on 128–512 channels at up to 512×512 pixels: as long as several
/// UNet steps in float.
/// </summary>
public static class VaeDecoderQuantizer
{
    /// <summary>Quantizes <paramref name="decoderDirectory"/>/model.onnx; <paramref name="latents"/> are decoder inputs [1, 4, h, w].</summary>
    public static async Task<IReadOnlyDictionary<string, int>> QuantizeAsync(string decoderDirectory, IReadOnlyList<float[]> latents, int latentHeight, int latentWidth,
        QuantizationOptions options, SessionSettings session, IProgress<string>? progress, CancellationToken ct)
    {
        if (latents.Count == 0) throw new ArgumentException("The VAE decoder needs at least one calibration latent.", nameof(latents));
        var model = await ModelFiles.ReadAsync(Path.Combine(decoderDirectory, "model.onnx"), ct);
        ZeroAddRemoval.Apply(model.Graph);
        var plan = QdqQuantizer.Plan(model.Graph, options with { Preset = QuantizationPreset.Mixed, WeightOnlyTimeEmbedding = false });
        if (plan.Targets.Count == 0) throw new InvalidOperationException("The VAE decoder has no Conv or MatMul with initializer weights to quantize.");
        string input = model.Graph.Input[0].Name;
        long[] shape = [1, 4, latentHeight, latentWidth];
        var ranges = Calibration.MeasureRanges(model, decoderDirectory, plan.Tensors, latents.Count,
            i => [(input, OrtValue.CreateTensorValueFromMemory(latents[i], shape))], session, progress, ct, options.ClipPercentile);
        progress?.Report($"VAE decoder: quantizing {plan.Targets.Count} nodes");
        var quantized = QdqQuantizer.Apply(model, plan, ranges, decoderDirectory);
        await ModelFiles.WriteAsync(model, decoderDirectory, decoderDirectory, ct);
        return quantized;
    }
}
