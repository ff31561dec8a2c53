namespace SdFunctions.Optimizer.Quantization;

/// <summary>Which operations become 8-bit, after NNCF's presets for diffusion models.</summary>
public enum QuantizationPreset
{
    /// <summary>Convolutions and linear layers (weights × activations); attention scores, norms, softmax, time embedding stay float.</summary>
    Mixed,

    /// <summary>Mixed, plus the attention matmuls (activations × activations) and the residual additions.</summary>
    Aggressive,
}

/// <summary>
/// Static INT8 quantization in QDQ form: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations
/// whose ranges are the min and max seen while running the float model on calibration inputs (min-max method;
/// the range is widened to include 0 so that zero is exact).
/// </summary>
public sealed record QuantizationOptions
{
    public QuantizationPreset Preset { get; init; } = QuantizationPreset.Mixed;

    /// <summary>
    /// Nodes whose name contains one of these stay float whatever the preset: the timestep embedding (its sinusoid
    /// spans many magnitudes, NNCF keeps it float too), the resnets' projections of it, and conv_in, which reads the
    /// raw latents (4 input channels: cheap in float, and it took the tiny UNet's error from 9.3 % to 7.1 %).
    /// </summary>
    public IReadOnlyList<string> KeepFloat { get; init; } = ["/time_proj/", "/time_embedding/", "/time_emb_proj/", "/conv_in/"];

    /// <summary>
    /// 7-bit weights ([−63, 63]). On x86 CPUs without VNNI (AVX2, AVX-512F alone) ONNX Runtime's u8×s8 kernels add pairs of
    /// products in int16 (vpmaddubsw), which saturates for 255 · 127 · 2; with 63 it cannot. On by default so one bundle
    /// is exact on every x86-64 CPU; turn it off for a bundle that only runs on VNNI CPUs (one bit more weight precision).
    /// Measured on an AVX2 EPYC with the tiny UNet: full range 23 % relative L2 error vs FP32, reduced range 7 %.
    /// </summary>
    public bool ReduceRange { get; init; } = true;

    /// <summary>Store the time embedding's linear weights as int8 anyway (dequantized to float when the model loads).</summary>
    public bool WeightOnlyTimeEmbedding { get; init; } = true;
}
