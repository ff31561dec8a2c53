using System.Numerics;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Which UNet calls of a generation run the whole UNet under DeepCache; the others run only the shallow branch on the
/// feature the last full call cached. Indexed as DeepCache's helper does (deepcache.py <c>wrap_unet_forward</c>): a call's
/// index is the first position of its timestep in the scheduler's list, so PNDM's repeated timestep gives calls 1 and 2 the
/// same index and the call after them index 3. Uniform: full when (index − first index) is a multiple of the interval.
/// Non-uniform: full when the index is in DeepCache's <c>sample_from_quad_center</c> set (its bundled pipeline), denser
/// around a centre step.
/// </summary>
public sealed class DeepCacheSchedule
{
    public const string Uniform = "uniform", NonUniform = "nonuniform";
    public static readonly IReadOnlyList<string> Names = [Uniform, NonUniform];
    public const int MaxInterval = 20;

    /// <summary>Where the non-uniform schedule is densest (DeepCache's <c>center</c>, which its pipeline leaves to the caller): 0.3 × steps.</summary>
    public const double CenterFraction = 0.3;

    /// <summary>The exponent DeepCache's search starts from (it lowers it by 0.02 until the count fits).</summary>
    public const double StartPower = 1.4;

    private readonly bool[] _full;

    public int Interval { get; }
    public string Kind { get; }
    public IReadOnlyList<int> FullCalls { get; }
    public int ShallowCalls => _full.Length - FullCalls.Count;

    private DeepCacheSchedule(int interval, string kind, bool[] full)
    {
        Interval = interval;
        Kind = kind;
        _full = full;
        FullCalls = Enumerable.Range(0, full.Length).Where(i => full[i]).ToList();
    }

    public bool IsFull(int call) => _full[call];

    /// <summary>The schedule for <paramref name="timesteps"/> (the scheduler's, one per UNet call) of a <paramref name="steps"/>-step generation; interval 1 = every call full.</summary>
    public static DeepCacheSchedule Create(int interval, string kind, IReadOnlyList<double> timesteps, int steps)
    {
        var index = timesteps.Select(t => IndexOf(timesteps, t)).ToArray();
        bool[] full;
        if (interval == 1) full = [.. index.Select(_ => true)];
        else if (kind == Uniform) full = [.. index.Select(i => (i - index[0]) % interval == 0)];
        else
        {
            var slow = NonUniformSteps(steps, interval).ToHashSet();
            full = [.. index.Select(slow.Contains)];
        }
        return new DeepCacheSchedule(interval, kind, full);
    }

    private static int IndexOf(IReadOnlyList<double> timesteps, double t)
    {
        for (int i = 0; i < timesteps.Count; i++) if (timesteps[i] == t) return i;
        throw new ArgumentException("the timestep is not in the list", nameof(t));
    }

    /// <summary>
    /// DeepCache's non-uniform full steps: <c>sample_from_quad_center(steps, ⌈steps / interval⌉, center, pow)</c> with its own
    /// arithmetic — numpy's linspace from (−center)^(1/pow), a complex number, to (steps − center)^(1/pow), each point raised
    /// to pow and truncated to its real part's integer, unique, inner ones shifted by center, 0 first.
    /// </summary>
    /// <exception cref="InvalidGenerationRequestException">When no exponent above 1 gives that many distinct steps (DeepCache raises too).</exception>
    public static IReadOnlyList<int> NonUniformSteps(int steps, int interval)
    {
        int slow = steps / interval + (steps % interval != 0 ? 1 : 0);
        int center = (int)(steps * CenterFraction);
        for (double pow = StartPower; pow > 1; pow -= 0.02)
        {
            var start = Complex.Pow(-center, 1 / pow);
            var stop = new Complex(Math.Pow(steps - center, 1 / pow), 0);
            int n = slow + 1;
            var delta = (stop - start) / (n - 1);
            var values = new SortedSet<int>();
            for (int k = 0; k < n; k++)
            {
                var x = k == n - 1 ? stop : k * delta + start;
                values.Add((int)Complex.Pow(x, pow).Real);
            }
            List<int> indices = [0, .. values.Skip(1).Take(values.Count - 2).Select(v => v + center)];
            if (indices.Count == slow) return indices;
        }
        throw new InvalidGenerationRequestException("cacheSchedule",
            $"DeepCache's non-uniform schedule cannot place {slow} full steps in {steps} steps; use the uniform schedule.");
    }
}
