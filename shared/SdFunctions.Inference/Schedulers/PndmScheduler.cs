namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// diffusers' PNDMScheduler in PLMS mode (skip_prk_steps, as every SD 1.x config sets): N+1 UNet calls,
/// the second timestep repeated, a linear multistep over up to four past model outputs.
/// </summary>
public sealed class PndmScheduler : SchedulerBase
{
    public PndmScheduler(SchedulerConfig config) : base(config)
    {
        // A config without the key gets PLMS too: SD pipelines never run PNDM's Runge–Kutta warm-up.
        if (config.SkipPrkSteps == false)
            throw new InvalidDataException("skip_prk_steps is false: PNDM's Runge–Kutta (PRK) warm-up is not implemented, only PLMS");
    }

    public const string ApiName = "pndm";
    public override string Name => ApiName;
    protected override string DefaultSpacing => "leading";
    private bool SetAlphaToOne => Config.SetAlphaToOne ?? false;

    private readonly List<float[]> _ets = [];
    private float[]? _curSample;
    private float[] _combined = [];

    protected override void Reset(int n)
    {
        // Ascending base timesteps, then PLMS order: all but the last, the second-to-last again, the last; reversed.
        double[] asc = NoiseSchedule.DiscreteTimesteps(Spacing, Config.NumTrainTimesteps, n, Config.StepsOffset).Reverse().ToArray();
        double[] plms = asc.Length > 1 ? [.. asc[..^1], asc[^2], asc[^1]] : [asc[0]];
        Timesteps = plms.Reverse().ToArray();
        _ets.Clear();
        _curSample = null;
    }

    /// <summary>
    /// Checks the index but keeps the step counter at 0: diffusers' PLMS counts its own steps (its counter) wherever the
    /// timesteps start, so a shortened run warms its multistep history up again from the first step it takes.
    /// </summary>
    public override void SetBeginIndex(int beginIndex) => CheckStepIndex(beginIndex, nameof(beginIndex));

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        int stepRatio = Config.NumTrainTimesteps / NumInferenceSteps;
        int t = (int)timestep, prevT = t - stepRatio;
        if (StepIndex != 1)
        {
            // Only the last four outputs are ever used.
            var kept = _ets.Count == 4 ? _ets[0] : new float[modelOutput.Length];
            if (_ets.Count == 4) _ets.RemoveAt(0);
            modelOutput.CopyTo(kept);
            _ets.Add(kept);
        }
        else
        {
            prevT = t;
            t += stepRatio;
        }

        if (_combined.Length != modelOutput.Length) _combined = new float[modelOutput.Length];
        var m = _combined.AsSpan();
        ReadOnlySpan<float> source = sample;
        int k = _ets.Count;
        if (k == 1 && StepIndex == 0)
        {
            modelOutput.CopyTo(m);
            _curSample = sample.ToArray();
        }
        else if (k == 1 && StepIndex == 1)
        {
            var e1 = _ets[^1];
            for (int i = 0; i < m.Length; i++) m[i] = (modelOutput[i] + e1[i]) / 2;
            source = _curSample ?? throw new InvalidOperationException("PNDM lost its first sample.");
        }
        else if (k == 2) Combine(m, (3, _ets[^1]), (-1, _ets[^2]), 2);
        else if (k == 3) Combine(m, (23, _ets[^1]), (-16, _ets[^2]), 12, (5, _ets[^3]));
        else Combine(m, (55, _ets[^1]), (-59, _ets[^2]), 24, (37, _ets[^3]), (-9, _ets[^4]));

        PrevSample(source, t, prevT, m, sample);
        if (StepIndex == 1) _curSample = null;
        StepIndex++;
    }

    private static void Combine(Span<float> m, (float w, float[] e) a, (float w, float[] e) b, float div,
        (float w, float[] e) c = default, (float w, float[] e) d = default)
    {
        for (int i = 0; i < m.Length; i++)
        {
            float v = a.w * a.e[i] + b.w * b.e[i];
            if (c.e is not null) v += c.w * c.e[i];
            if (d.e is not null) v += d.w * d.e[i];
            m[i] = div == 24 ? (1f / 24) * v : v / div; // diffusers multiplies by 1/24 for the 4th order; kept for bit-closeness
        }
    }

    // Formula (9) of the PNDM paper, as diffusers' _get_prev_sample.
    private void PrevSample(ReadOnlySpan<float> x, int t, int prevT, Span<float> m, Span<float> destination)
    {
        double aT = AlphasCumprod[t], aPrev = AlphaProd(prevT, SetAlphaToOne);
        double bT = 1 - aT, bPrev = 1 - aPrev;
        if (Config.PredictionType == "v_prediction")
            for (int i = 0; i < m.Length; i++) m[i] = (float)(Math.Sqrt(aT) * m[i] + Math.Sqrt(bT) * x[i]);
        float sampleCoeff = (float)Math.Sqrt(aPrev / aT);
        float outCoeff = (float)((aPrev - aT) / (aT * Math.Sqrt(bPrev) + Math.Sqrt(aT * bT * aPrev)));
        for (int i = 0; i < m.Length; i++) destination[i] = sampleCoeff * x[i] - outCoeff * m[i];
    }
}
