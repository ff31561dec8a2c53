namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// diffusers' LMSDiscreteScheduler (order 4): a linear multistep over past derivatives, with coefficients
/// that integrate the Lagrange basis polynomials between consecutive σ. diffusers integrates them with
/// scipy's quad; the integrands are polynomials of degree ≤ 3, which 4-point Gauss–Legendre integrates exactly.
/// </summary>
public sealed class LmsDiscreteScheduler(SchedulerConfig config) : SigmaSchedulerBase(config)
{
    public const int Order = 4;
    public const string ApiName = "lms";
    public override string Name => ApiName;
    private readonly List<float[]> _derivatives = [];

    protected override void OnSigmasSet() => _derivatives.Clear();

    public override void Step(ReadOnlySpan<float> modelOutput, double timestep, Span<float> sample, IGaussianNoise? noise = null)
    {
        EnsureStarted();
        float sigma = Sigmas[StepIndex];
        var x0 = PredictOriginal(modelOutput, sample, sigma);
        var derivative = _derivatives.Count == Order ? _derivatives[0] : new float[sample.Length];
        if (_derivatives.Count == Order) _derivatives.RemoveAt(0);
        for (int i = 0; i < sample.Length; i++) derivative[i] = (sample[i] - x0[i]) / sigma;
        _derivatives.Add(derivative);

        int order = Math.Min(StepIndex + 1, Order);
        Span<float> coeffs = stackalloc float[order];
        for (int k = 0; k < order; k++) coeffs[k] = (float)Coefficient(order, StepIndex, k);
        // A run begun past step 0 (image-to-image) has fewer derivatives than its order: diffusers zips the two, using as many terms as it has.
        int terms = Math.Min(order, _derivatives.Count);
        for (int i = 0; i < sample.Length; i++)
        {
            float sum = 0;
            for (int k = 0; k < terms; k++) sum += coeffs[k] * _derivatives[^(k + 1)][i];
            sample[i] += sum;
        }
        StepIndex++;
    }

    private static readonly (double X, double W)[] Gauss4 =
    [
        (-0.8611363115940526, 0.3478548451374538), (-0.3399810435848563, 0.6521451548625461),
        (0.3399810435848563, 0.6521451548625461), (0.8611363115940526, 0.3478548451374538),
    ];

    // ∫_{σ_t}^{σ_{t+1}} Π_{k≠j} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ
    internal double Coefficient(int order, int t, int j)
    {
        double a = Sigmas[t], b = Sigmas[t + 1], half = (b - a) / 2, mid = (a + b) / 2, sum = 0;
        foreach (var (x, w) in Gauss4)
        {
            double tau = mid + half * x, prod = 1;
            for (int k = 0; k < order; k++)
                if (k != j) prod *= (tau - Sigmas[t - k]) / ((double)Sigmas[t - j] - Sigmas[t - k]);
            sum += w * prod;
        }
        return sum * half;
    }
}
