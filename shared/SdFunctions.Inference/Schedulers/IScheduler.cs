namespace SdFunctions.Inference.Schedulers;

/// <summary>Draws standard normal noise, for schedulers that inject noise at each step (Euler ancestral).</summary>
public interface IGaussianNoise
{
    void Fill(Span<float> destination);
}

/// <summary>
/// A diffusion sampler, shaped like diffusers' schedulers: <see cref="SetTimesteps"/> once per generation,
/// then for each timestep <see cref="ScaleModelInput"/> before the UNet call and <see cref="Step"/> after it.
/// Instances hold per-generation state (step index, multistep history): one instance per generation.
/// </summary>
public interface IScheduler
{
    /// <summary>The CLI / API name, its row in <see cref="SchedulerCatalog"/>.</summary>
    string Name { get; }

    /// <summary>The timesteps to feed the UNet, in order. Fractional for Euler/LMS with linspace spacing.</summary>
    IReadOnlyList<double> Timesteps { get; }

    /// <summary>What the initial unit-variance latents are multiplied by.</summary>
    float InitNoiseSigma { get; }

    /// <summary>Prepares the timesteps for a generation of <paramref name="numInferenceSteps"/> steps and resets state.</summary>
    void SetTimesteps(int numInferenceSteps);

    /// <summary>
    /// Starts the run at step <paramref name="beginIndex"/> of <see cref="Timesteps"/> (image-to-image skips the noisiest
    /// steps), as diffusers' set_begin_index: call after <see cref="SetTimesteps"/>, then step from that timestep on.
    /// </summary>
    void SetBeginIndex(int beginIndex);

    /// <summary>
    /// Noises a clean sample to the level of step <paramref name="stepIndex"/> (diffusers' add_noise at
    /// timesteps[stepIndex]): where image-to-image starts its loop. No <see cref="InitNoiseSigma"/> factor.
    /// </summary>
    void AddNoise(ReadOnlySpan<float> original, ReadOnlySpan<float> noise, int stepIndex, Span<float> destination);

    /// <summary>Writes the UNet input for the current step: <paramref name="sample"/> scaled as the scheduler needs.</summary>
    void ScaleModelInput(ReadOnlySpan<float> sample, double timestep, Span<float> destination);

    /// <summary>Advances <paramref name="sample"/> in place by one step given the (guided) model output.</summary>
    void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null);

    /// <summary>The x0 prediction of the last step, where the scheduler computes one; empty otherwise.</summary>
    ReadOnlySpan<float> PredictedOriginalSample { get; }
}
