namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// The training noise schedule (betas → alphas_cumprod) and the timestep/sigma helpers the schedulers
/// share. Float rounding follows PyTorch's so that our numbers match diffusers' to float precision:
/// betas are float32 from torch.linspace's two-sided formula, the cumulative product accumulates in
/// double and rounds each entry to float32, as torch.cumprod does on CPU.
/// </summary>
public static class NoiseSchedule
{
    public static float[] AlphasCumprod(SchedulerConfig config)
    {
        int n = config.NumTrainTimesteps;
        float[] betas = config.TrainedBetas is { } trained
            ? trained.Select(b => (float)b).ToArray()
            : config.BetaSchedule switch
            {
                "linear" => TorchLinspace((float)config.BetaStart, (float)config.BetaEnd, n),
                "scaled_linear" => TorchLinspace(MathF.Sqrt((float)config.BetaStart), MathF.Sqrt((float)config.BetaEnd), n)
                    .Select(b => b * b).ToArray(),
                "squaredcos_cap_v2" => CosineBetas(n),
                var s => throw new InvalidDataException($"beta_schedule '{s}' is not supported"),
            };
        var result = new float[n];
        double product = 1.0;
        for (int i = 0; i < n; i++)
        {
            product *= 1.0f - betas[i];
            result[i] = (float)product;
        }
        return result;
    }

    private static float[] TorchLinspace(float start, float end, int steps)
    {
        var values = new float[steps];
        float step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        for (int i = 0; i < steps; i++)
            values[i] = i < halfway ? start + step * i : end - step * (steps - i - 1);
        return values;
    }

    // diffusers' betas_for_alpha_bar with the cosine alpha_bar (Improved DDPM), max beta 0.999.
    private static float[] CosineBetas(int n)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        return Enumerable.Range(0, n).Select(i => (float)Math.Min(1 - AlphaBar((i + 1.0) / n) / AlphaBar((double)i / n), 0.999)).ToArray();
    }

    /// <summary>np.linspace(start, stop, count) in double.</summary>
    public static double[] Linspace(double start, double stop, int count)
    {
        var v = new double[count];
        if (count == 1) { v[0] = start; return v; }
        double step = (stop - start) / (count - 1);
        for (int i = 0; i < count; i++) v[i] = start + i * step;
        v[count - 1] = stop;
        return v;
    }

    /// <summary>
    /// The descending integer timesteps of DDIM/PNDM-style schedulers for a spacing: leading
    /// (arange · (T // n) + steps_offset), linspace (linspace(0, T−1, n).round()) or trailing.
    /// </summary>
    public static double[] DiscreteTimesteps(string spacing, int trainSteps, int count, int stepsOffset) => spacing switch
    {
        "linspace" => Linspace(0, trainSteps - 1, count).Select(RoundHalfEven).Reverse().ToArray(),
        "leading" => Enumerable.Range(0, count).Select(i => (double)(i * (trainSteps / count) + stepsOffset)).Reverse().ToArray(),
        "trailing" => Trailing(trainSteps, count),
        _ => throw new InvalidDataException($"timestep_spacing '{spacing}' is not supported"),
    };

    // np.round(np.arange(T, 0, -T / n)) - 1, descending.
    private static double[] Trailing(int trainSteps, int count)
    {
        double ratio = (double)trainSteps / count;
        var list = new List<double>();
        for (double t = trainSteps; t > 0; t -= ratio) list.Add(RoundHalfEven(t) - 1);
        return [.. list];
    }

    /// <summary>numpy rounds half to even.</summary>
    public static double RoundHalfEven(double x) => Math.Round(x, MidpointRounding.ToEven);

    /// <summary>sqrt((1 − ᾱ) / ᾱ) for every training timestep, in float32 as torch computes it.</summary>
    public static float[] TrainingSigmas(float[] alphasCumprod) =>
        alphasCumprod.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();

    /// <summary>np.interp(x, arange(len(ys)), ys).</summary>
    public static double Interp(double x, float[] ys)
    {
        if (x <= 0) return ys[0];
        if (x >= ys.Length - 1) return ys[^1];
        int lo = (int)Math.Floor(x);
        double w = x - lo;
        return ys[lo] + (ys[lo + 1] - (double)ys[lo]) * w;
    }

    /// <summary>Karras et al. (2022) noise levels: ρ = 7 between σ_max and σ_min.</summary>
    public static double[] KarrasSigmas(double sigmaMin, double sigmaMax, int count)
    {
        const double rho = 7.0;
        double minInv = Math.Pow(sigmaMin, 1 / rho), maxInv = Math.Pow(sigmaMax, 1 / rho);
        return Linspace(0, 1, count).Select(r => Math.Pow(maxInv + r * (minInv - maxInv), rho)).ToArray();
    }

    /// <summary>diffusers' _sigma_to_t: the fractional training timestep whose log-sigma interpolates to σ.</summary>
    public static double SigmaToTimestep(double sigma, float[] trainingSigmas)
    {
        double logSigma = Math.Log(Math.Max(sigma, 1e-10));
        int n = trainingSigmas.Length;
        // low_idx = last index whose log-sigma is ≤ log σ (sigmas ascend with t), clipped to n − 2.
        int low = 0;
        for (int i = 0; i < n; i++) if (logSigma - Math.Log(trainingSigmas[i]) >= 0) low = i;
        low = Math.Min(low, n - 2);
        double lo = Math.Log(trainingSigmas[low]), hi = Math.Log(trainingSigmas[low + 1]);
        double w = Math.Clamp((lo - logSigma) / (lo - hi), 0, 1);
        return (1 - w) * low + w * (low + 1);
    }
}
