namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Sees what the UNet is given at each denoising step, just before it runs: the (scaled) latents of the whole batch,
/// the timestep and the text conditioning. Quantization calibrates on these real inputs.
/// </summary>
public interface IUNetInputObserver
{
    void Observe(ReadOnlySpan<float> sample, double timestep, ReadOnlySpan<float> encoderHiddenStates);
}
