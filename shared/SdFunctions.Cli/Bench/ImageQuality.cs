namespace SdFunctions.Cli.Bench;

/// <summary>How close two renderings of one image are.</summary>
public static class ImageQuality
{
    /// <summary>Peak signal-to-noise ratio of two 8-bit images of the same size, in dB (∞ when equal).</summary>
    public static double Psnr(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"The images differ in size: {a.Length} and {b.Length} bytes.");
        double squares = 0;
        for (int i = 0; i < a.Length; i++) { double d = a[i] - b[i]; squares += d * d; }
        double mse = squares / a.Length;
        return mse == 0 ? double.PositiveInfinity : 10 * Math.Log10(255.0 * 255.0 / mse);
    }
}
