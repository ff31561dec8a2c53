namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// diffusers' LCMScheduler (0.24): few-step sampling for latent consistency models. Timesteps are picked from the
/// <c>original_inference_steps</c> grid the model was distilled on; each step predicts x0, applies the consistency
/// boundary condition (c_skip, c_out) and re-noises to the next timestep with fresh noise, except the last step,
/// whose output is the denoised x0 itself.
/// </summary>
public sealed class LcmScheduler(SchedulerConfig config) : SchedulerBase(config)
{
    private const float SigmaData = 0.5f;
    private float[] _noise = [];

    public const string ApiName = "lcm";
    public override string Name => ApiName;

    // LCM has its own spacing; this is only what the base class would report.
    protected override string DefaultSpacing => "leading";
    private bool SetAlphaToOne => Config.SetAlphaToOne ?? true;
    private bool ClipSample => Config.ClipSample ?? false;

    /// <summary>The most steps this config allows: one per timestep of the distillation grid.</summary>
    public int MaxSteps => MaxStepsFor(Config);

    /// <summary><see cref="MaxSteps"/> without building a scheduler (no noise schedule computed).</summary>
    public static int MaxStepsFor(SchedulerConfig config) => Math.Min(config.OriginalInferenceSteps, config.NumTrainTimesteps);

    protected override void Reset(int n)
    {
        int original = Config.OriginalInferenceSteps;
        if (original > Config.NumTrainTimesteps)
            throw new InvalidDataException($"original_inference_steps {original} exceeds num_train_timesteps {Config.NumTrainTimesteps}");
        if (n > original)
            throw new ArgumentOutOfRangeException(nameof(n), n, $"LCM runs at most original_inference_steps = {original} steps");
        // The grid [k−1, 2k−1, …, T−1] (k = T // original), descending; n indices floor(linspace(0, original, n, endpoint=False)).
        int k = Config.NumTrainTimesteps / original;
        var timesteps = new double[n];
        double spacing = original / (double)n; // as numpy's linspace: i · step, not i · original / n
        for (int i = 0; i < n; i++)
        {
            int index = (int)Math.Floor(i * spacing);
            timesteps[i] = (original - index) * k - 1;
        }
        Timesteps = timesteps;
    }

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        bool last = StepIndex == Timesteps.Count - 1;
        if (!last && noise is null) throw new ArgumentNullException(nameof(noise), "LCM adds fresh noise between steps: pass a noise source.");
        int t = (int)timestep;
        int prevT = last ? t : (int)Timesteps[StepIndex + 1];
        float aT = AlphasCumprod[t], bT = 1f - aT;
        float aPrev = (float)AlphaProd(prevT, SetAlphaToOne), bPrev = 1f - aPrev;
        float sqrtA = MathF.Sqrt(aT), sqrtB = MathF.Sqrt(bT), sqrtAPrev = MathF.Sqrt(aPrev), sqrtBPrev = MathF.Sqrt(bPrev);

        // Boundary condition: at t → 0 the model's x0 estimate is trusted less and the sample more.
        float scaled = (float)(t * Config.TimestepScaling);
        float cSkip = SigmaData * SigmaData / (scaled * scaled + SigmaData * SigmaData);
        float cOut = scaled / MathF.Sqrt(scaled * scaled + SigmaData * SigmaData);

        if (!last)
        {
            if (_noise.Length != sample.Length) _noise = new float[sample.Length];
            noise!.Fill(_noise);
        }
        bool epsilon = Config.PredictionType == "epsilon";
        float range = (float)Config.ClipSampleRange;
        var denoised = EnsurePredOriginal(sample.Length);
        for (int i = 0; i < sample.Length; i++)
        {
            float x = sample[i], mo = modelOutput[i];
            float x0 = epsilon ? (x - sqrtB * mo) / sqrtA : sqrtA * x - sqrtB * mo;
            if (ClipSample) x0 = Math.Clamp(x0, -range, range);
            float d = cOut * x0 + cSkip * x;
            denoised[i] = d;
            sample[i] = last ? d : sqrtAPrev * d + sqrtBPrev * _noise[i];
        }
        StepIndex++;
    }
}
