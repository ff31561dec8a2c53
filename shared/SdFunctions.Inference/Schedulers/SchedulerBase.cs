namespace SdFunctions.Inference.Schedulers;

/// <summary>State every scheduler has: the config, the training noise schedule and the step counter.</summary>
public abstract class SchedulerBase : IScheduler
{
    protected SchedulerBase(SchedulerConfig config)
    {
        Config = config;
        AlphasCumprod = NoiseSchedule.AlphasCumprod(config);
    }

    public abstract string Name { get; }
    public SchedulerConfig Config { get; }
    public float[] AlphasCumprod { get; }
    public IReadOnlyList<double> Timesteps { get; protected set; } = [];
    public virtual float InitNoiseSigma => 1f;
    public int NumInferenceSteps { get; private set; }

    /// <summary>How many steps have been taken since <see cref="SetTimesteps"/> (diffusers' step_index).</summary>
    public int StepIndex { get; protected set; }

    protected float[] PredOriginal = [];
    public ReadOnlySpan<float> PredictedOriginalSample => PredOriginal;

    /// <summary>The timestep spacing this class uses when the config does not name one.</summary>
    protected abstract string DefaultSpacing { get; }
    protected string Spacing => Config.TimestepSpacing ?? DefaultSpacing;

    public void SetTimesteps(int numInferenceSteps)
    {
        if (numInferenceSteps < 1 || numInferenceSteps > Config.NumTrainTimesteps)
            throw new ArgumentOutOfRangeException(nameof(numInferenceSteps), numInferenceSteps,
                $"steps must be between 1 and {Config.NumTrainTimesteps}");
        NumInferenceSteps = numInferenceSteps;
        StepIndex = 0;
        Reset(numInferenceSteps);
    }

    public virtual void SetBeginIndex(int beginIndex)
    {
        CheckStepIndex(beginIndex, nameof(beginIndex));
        StepIndex = beginIndex;
    }

    /// <summary>DDPM-style, as DDIM, PNDM and LCM do it: √ᾱ_t·x0 + √(1 − ᾱ_t)·ε, in float32 like torch.</summary>
    public virtual void AddNoise(ReadOnlySpan<float> original, ReadOnlySpan<float> noise, int stepIndex, Span<float> destination)
    {
        CheckStepIndex(stepIndex, nameof(stepIndex));
        float alpha = AlphasCumprod[(int)Timesteps[stepIndex]];
        float signal = MathF.Sqrt(alpha), noiseScale = MathF.Sqrt(1f - alpha);
        for (int i = 0; i < destination.Length; i++) destination[i] = signal * original[i] + noiseScale * noise[i];
    }

    protected void CheckStepIndex(int index, string name)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("Call SetTimesteps first.");
        if (index < 0 || index >= Timesteps.Count)
            throw new ArgumentOutOfRangeException(name, index, $"a step index from 0 to {Timesteps.Count - 1}");
    }

    /// <summary>Computes the timesteps (and sigmas) and clears per-generation state.</summary>
    protected abstract void Reset(int numInferenceSteps);

    public virtual void ScaleModelInput(ReadOnlySpan<float> sample, double timestep, Span<float> destination) =>
        sample.CopyTo(destination);

    public abstract void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null);

    protected float[] EnsurePredOriginal(int length)
    {
        if (PredOriginal.Length != length) PredOriginal = new float[length];
        return PredOriginal;
    }

    protected void EnsureStarted()
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("Call SetTimesteps before Step.");
        if (StepIndex >= Timesteps.Count) throw new InvalidOperationException($"All {Timesteps.Count} steps have been taken.");
    }

    /// <summary>ᾱ at an integer timestep; below 0 it is the final ᾱ (1 with set_alpha_to_one, else ᾱ₀).</summary>
    protected double AlphaProd(int timestep, bool setAlphaToOne) =>
        timestep >= 0 ? AlphasCumprod[timestep] : setAlphaToOne ? 1.0 : AlphasCumprod[0];
}

/// <summary>Schedulers that work in σ space (Euler, Euler ancestral, LMS): input scaling 1/√(σ²+1).</summary>
public abstract class SigmaSchedulerBase(SchedulerConfig config) : SchedulerBase(config)
{
    protected override string DefaultSpacing => "linspace";
    private float[]? _trainingSigmas;
    protected float[] TrainingSigmas => _trainingSigmas ??= NoiseSchedule.TrainingSigmas(AlphasCumprod);

    /// <summary>σ for each step and a final 0.</summary>
    public float[] Sigmas { get; private set; } = [];

    /// <summary>Whether this class supports use_karras_sigmas (Euler ancestral does not in diffusers 0.24).</summary>
    protected virtual bool SupportsKarras => true;

    public override float InitNoiseSigma => Spacing is "linspace" or "trailing"
        ? Sigmas.Max()
        : MathF.Sqrt(Sigmas.Max() * Sigmas.Max() + 1);

    protected override void Reset(int numInferenceSteps)
    {
        int n = numInferenceSteps, T = Config.NumTrainTimesteps;
        // linspace stays fractional (float32, as numpy makes it); leading and trailing are whole numbers.
        double[] timesteps = Spacing == "linspace"
            ? NoiseSchedule.Linspace(0, T - 1, n).Select(t => (double)(float)t).Reverse().ToArray()
            : NoiseSchedule.DiscreteTimesteps(Spacing, T, n, Config.StepsOffset);
        double[] sigmas = timesteps.Select(t => NoiseSchedule.Interp(t, TrainingSigmas)).ToArray();
        if (Config.UseKarrasSigmas && SupportsKarras)
        {
            sigmas = NoiseSchedule.KarrasSigmas(sigmas[^1], sigmas[0], n);
            timesteps = sigmas.Select(s => NoiseSchedule.SigmaToTimestep(s, TrainingSigmas)).ToArray();
        }
        Timesteps = timesteps.Select(t => (double)(float)t).ToArray();
        Sigmas = [.. sigmas.Select(s => (float)s), 0f];
        OnSigmasSet();
    }

    protected virtual void OnSigmasSet() { }

    /// <summary>x0 + σ·ε: the σ-space form (no √(σ² + 1) factor, as diffusers).</summary>
    public override void AddNoise(ReadOnlySpan<float> original, ReadOnlySpan<float> noise, int stepIndex, Span<float> destination)
    {
        CheckStepIndex(stepIndex, nameof(stepIndex));
        float sigma = Sigmas[stepIndex];
        for (int i = 0; i < destination.Length; i++) destination[i] = original[i] + sigma * noise[i];
    }

    public override void ScaleModelInput(ReadOnlySpan<float> sample, double timestep, Span<float> destination)
    {
        float sigma = Sigmas[Math.Min(StepIndex, Sigmas.Length - 1)];
        float scale = 1f / MathF.Sqrt(sigma * sigma + 1f);
        for (int i = 0; i < sample.Length; i++) destination[i] = sample[i] * scale;
    }

    /// <summary>x0 = x − σ·ε (epsilon) or the v-prediction form, written to PredOriginal.</summary>
    protected float[] PredictOriginal(ReadOnlySpan<float> modelOutput, ReadOnlySpan<float> sample, float sigma)
    {
        var x0 = EnsurePredOriginal(sample.Length);
        if (Config.PredictionType == "epsilon")
        {
            for (int i = 0; i < x0.Length; i++) x0[i] = sample[i] - sigma * modelOutput[i];
        }
        else
        {
            float a = -sigma / MathF.Sqrt(sigma * sigma + 1), b = 1f / (sigma * sigma + 1);
            for (int i = 0; i < x0.Length; i++) x0[i] = modelOutput[i] * a + sample[i] * b;
        }
        return x0;
    }
}
