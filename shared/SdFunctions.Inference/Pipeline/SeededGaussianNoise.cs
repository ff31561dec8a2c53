using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// The RNG behind a request's seed, specified so that a seed gives the same image on any machine and any
/// .NET version: xoshiro256** (Blackman &amp; Vigna) seeded through SplitMix64 from the 64-bit seed; each
/// normal sample comes from the Box–Muller transform of two uniform doubles u = (next() &gt;&gt; 11) · 2⁻⁵³
/// (the first u mapped to (0, 1] so log is finite), used as the pair (r·cos θ, r·sin θ) and rounded to float32.
/// The initial latents are the first 4·h·w samples in NCHW order; Euler ancestral's per-step noise continues
/// the same stream. (This is not torch.randn: a seed here does not reproduce a PyTorch image.)
/// </summary>
public sealed class SeededGaussianNoise : IGaussianNoise
{
    private ulong _s0, _s1, _s2, _s3;
    private double? _spare;

    public SeededGaussianNoise(long seed)
    {
        ulong x = unchecked((ulong)seed);
        _s0 = SplitMix64(ref x);
        _s1 = SplitMix64(ref x);
        _s2 = SplitMix64(ref x);
        _s3 = SplitMix64(ref x);
    }

    public void Fill(Span<float> destination)
    {
        for (int i = 0; i < destination.Length; i++) destination[i] = (float)NextGaussian();
    }

    public double NextGaussian()
    {
        if (_spare is { } spare) { _spare = null; return spare; }
        double u1 = 1.0 - NextUniform(); // (0, 1]
        double u2 = NextUniform();
        double r = Math.Sqrt(-2.0 * Math.Log(u1)), theta = 2.0 * Math.PI * u2;
        _spare = r * Math.Sin(theta);
        return r * Math.Cos(theta);
    }

    private double NextUniform() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    private ulong NextUInt64()
    {
        ulong result = RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = RotateLeft(_s3, 45);
        return result;
    }

    private static ulong RotateLeft(ulong x, int k) => (x << k) | (x >> (64 - k));

    private static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
