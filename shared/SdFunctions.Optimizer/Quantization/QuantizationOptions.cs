namespace SdFunctions.Optimizer.Quantization;

/// <summary>Which operations become 8-bit, after NNCF's presets for diffusion models.</summary>
public enum QuantizationPreset
{
    /// <summary>Convolutions and linear layers (weights × activations); attention scores, norms, softmax, time embedding stay float.</summary>
    Mixed,

    /// <summary>Mixed, plus the attention matmuls (activations × activations) and the residual additions.</summary>
    Aggressive,
}

/// <summary>How an activation's quantization range is chosen from what calibration saw.</summary>
public enum RangeMethod
{
    /// <summary>The smallest and largest value over every calibration input.</summary>
    MinMax,

    /// <summary>Per calibration input, the <see cref="QuantizationOptions.Percentile"/>-th percentile at each end (a run's rare spikes are clipped); the widest over the inputs.</summary>
    Percentile,
}

/// <summary>
/// Static INT8 quantization in QDQ form: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations
/// whose ranges come from running the float model on calibration inputs (<see cref="Ranges"/>; the range is widened to
/// include 0 so that zero is exact).
/// </summary>
public sealed record QuantizationOptions
{
    public QuantizationPreset Preset { get; init; } = QuantizationPreset.Mixed;

    /// <summary>
    /// Percentile 99.9 by measurement (docs/quality.md): on tiny-shapes INT8 + ToMe 0.4 it kept 93 % (DPM++ 20) and 96 % (PNDM 50) of
    /// the pictures right against min-max's 90 % and 93 %, at the same PSNR and the same speed (only the scales differ).
    /// </summary>
    public RangeMethod Ranges { get; init; } = RangeMethod.Percentile;

    /// <summary>With <see cref="RangeMethod.Percentile"/>: the share of a run's values inside the range, in percent (each end clips half the rest).</summary>
    public double Percentile { get; init; } = 99.9;

    /// <summary>The percentile calibration clips at, or null for min-max.</summary>
    public double? ClipPercentile => Ranges == RangeMethod.Percentile ? Percentile : null;

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

    /// <summary>
    /// Sensitivity-guided mixed precision: keep the most harmful layer groups float until the UNet's output error (relative L2
    /// against float on calibration inputs) is at most this (e.g. 0.05); null = quantize every group the preset names.
    /// </summary>
    public double? ErrorBudget { get; init; }

    /// <summary>Store the time embedding's linear weights as int8 anyway (dequantized to float when the model loads).</summary>
    public bool WeightOnlyTimeEmbedding { get; init; } = true;
}
