namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// diffusers' DPMSolverMultistepScheduler as DPM-Solver++ (2M by default): data-prediction, first order
/// at the start (and at the end for fewer than 15 steps, lower_order_final), second order between.
/// </summary>
public sealed class DpmSolverMultistepScheduler : SchedulerBase
{
    public DpmSolverMultistepScheduler(SchedulerConfig config) : base(config)
    {
        if (config.AlgorithmType != "dpmsolver++")
            throw new InvalidDataException($"algorithm_type '{config.AlgorithmType}' is not supported (dpmsolver++)");
        if (config.SolverOrder is not (1 or 2))
            throw new InvalidDataException($"solver_order {config.SolverOrder} is not supported (1 or 2)");
        if (config.SolverType is not ("midpoint" or "heun"))
            throw new InvalidDataException($"solver_type '{config.SolverType}' is not supported (midpoint, heun)");
        _trainingSigmas = NoiseSchedule.TrainingSigmas(AlphasCumprod);
    }

    public const string ApiName = "dpmpp-2m";
    public override string Name => ApiName;
    protected override string DefaultSpacing => "linspace";
    private readonly float[] _trainingSigmas;
    private float[] _previous = [], _current = [];
    private int _lowerOrderNums;

    public float[] Sigmas { get; private set; } = [];

    protected override void Reset(int n)
    {
        int T = Config.NumTrainTimesteps;
        double[] timesteps = Spacing switch
        {
            "linspace" => NoiseSchedule.Linspace(0, T - 1, n + 1).Select(NoiseSchedule.RoundHalfEven).Reverse().Take(n).ToArray(),
            "leading" => Enumerable.Range(0, n + 1).Select(i => (double)(i * (T / (n + 1)))).Reverse().Take(n)
                .Select(t => t + Config.StepsOffset).ToArray(),
            _ => NoiseSchedule.DiscreteTimesteps("trailing", T, n, 0),
        };
        if (Config.UseKarrasSigmas)
        {
            double[] karras = NoiseSchedule.KarrasSigmas(_trainingSigmas[0], _trainingSigmas[^1], n);
            Timesteps = karras.Select(s => NoiseSchedule.RoundHalfEven(NoiseSchedule.SigmaToTimestep(s, _trainingSigmas))).ToArray();
            Sigmas = [.. karras.Select(s => (float)s), (float)karras[^1]];
        }
        else
        {
            Timesteps = timesteps;
            Sigmas = [.. timesteps.Select(t => (float)NoiseSchedule.Interp(t, _trainingSigmas)), _trainingSigmas[0]];
        }
        _lowerOrderNums = 0;
    }

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        int i = StepIndex, n = Timesteps.Count;
        // First order on the last step for short schedules (lower_order_final); with solver_order ≤ 2
        // diffusers' lower_order_second changes nothing, so it has no counterpart here.
        bool lowerOrderFinal = i == n - 1 && (Config.EulerAtFinal || (Config.LowerOrderFinal && n < 15));

        // Keep the last two data predictions: swap buffers instead of allocating.
        if (_current.Length != sample.Length) { _current = new float[sample.Length]; _previous = new float[sample.Length]; }
        (_previous, _current) = (_current, _previous);
        ConvertModelOutput(modelOutput, sample, Sigmas[i], _current);
        _current.CopyTo(EnsurePredOriginal(sample.Length), 0);

        if (Config.SolverOrder == 1 || _lowerOrderNums < 1 || lowerOrderFinal) FirstOrder(sample, i);
        else SecondOrder(sample, i);

        if (_lowerOrderNums < Config.SolverOrder) _lowerOrderNums++;
        StepIndex++;
    }

    /// <summary>α_t·x0 + σ_t·ε from the step's σ (diffusers 0.24), which Karras sigmas move off the training grid.</summary>
    public override void AddNoise(ReadOnlySpan<float> original, ReadOnlySpan<float> noise, int stepIndex, Span<float> destination)
    {
        CheckStepIndex(stepIndex, nameof(stepIndex));
        float sigma = Sigmas[stepIndex];
        float alpha = 1f / MathF.Sqrt(sigma * sigma + 1f), sigmaT = sigma * alpha;
        for (int i = 0; i < destination.Length; i++) destination[i] = alpha * original[i] + sigmaT * noise[i];
    }

    private static (double Alpha, double Sigma) AlphaSigma(double sigma)
    {
        double alpha = 1 / Math.Sqrt(sigma * sigma + 1);
        return (alpha, sigma * alpha);
    }

    private static double Lambda(double sigma) { var (a, s) = AlphaSigma(sigma); return Math.Log(a) - Math.Log(s); }

    private void ConvertModelOutput(ReadOnlySpan<float> modelOutput, ReadOnlySpan<float> sample, float sigma, float[] x0)
    {
        var (alpha, sigmaT) = AlphaSigma(sigma);
        float a = (float)alpha, s = (float)sigmaT;
        if (Config.PredictionType == "epsilon")
            for (int k = 0; k < x0.Length; k++) x0[k] = (sample[k] - s * modelOutput[k]) / a;
        else
            for (int k = 0; k < x0.Length; k++) x0[k] = a * sample[k] - s * modelOutput[k];
    }

    private void FirstOrder(Span<float> sample, int i)
    {
        var (alphaT, sigmaT) = AlphaSigma(Sigmas[i + 1]);
        var (_, sigmaS) = AlphaSigma(Sigmas[i]);
        double h = Lambda(Sigmas[i + 1]) - Lambda(Sigmas[i]);
        float c1 = (float)(sigmaT / sigmaS), c2 = (float)(alphaT * (Math.Exp(-h) - 1.0));
        for (int k = 0; k < sample.Length; k++) sample[k] = c1 * sample[k] - c2 * _current[k];
    }

    private void SecondOrder(Span<float> sample, int i)
    {
        var (alphaT, sigmaT) = AlphaSigma(Sigmas[i + 1]);
        var (_, sigmaS0) = AlphaSigma(Sigmas[i]);
        double lambdaT = Lambda(Sigmas[i + 1]), lambdaS0 = Lambda(Sigmas[i]), lambdaS1 = Lambda(Sigmas[i - 1]);
        double h = lambdaT - lambdaS0, r0 = (lambdaS0 - lambdaS1) / h;
        double expm1 = Math.Exp(-h) - 1.0;
        float c1 = (float)(sigmaT / sigmaS0), c2 = (float)(alphaT * expm1);
        float c3 = Config.SolverType == "midpoint" ? (float)(0.5 * alphaT * expm1) : (float)(-alphaT * (expm1 / h + 1.0));
        float invR0 = (float)(1.0 / r0);
        for (int k = 0; k < sample.Length; k++)
        {
            float d0 = _current[k], d1 = invR0 * (_current[k] - _previous[k]);
            sample[k] = c1 * sample[k] - c2 * d0 - c3 * d1;
        }
    }
}
