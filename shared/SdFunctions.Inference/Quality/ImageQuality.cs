namespace SdFunctions.Inference.Quality;

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

    /// <summary>SSIM's window (Wang et al. 2004): an 11×11 Gaussian of σ 1.5, normalised.</summary>
    private const int Window = 11;
    private const double Sigma = 1.5, C1 = 0.01 * 255 * 0.01 * 255, C2 = 0.03 * 255 * 0.03 * 255;

    private static readonly double[] Weights = GaussianWeights();

    /// <summary>
    /// The structural similarity of two 8-bit RGB images (height × width × 3, row-major) as Wang et al. define it: an 11×11
    /// Gaussian window (σ 1.5), K1 0.01, K2 0.03, L 255, over every position where the window fits (no padding), computed on
    /// R, G and B separately and averaged. 1 for equal images.
    /// </summary>
    public static double Ssim(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b, int width, int height)
    {
        if (a.Length != b.Length) throw new ArgumentException($"The images differ in size: {a.Length} and {b.Length} bytes.");
        if (a.Length != width * height * 3) throw new ArgumentException($"{width}×{height} RGB is {width * height * 3} bytes, not {a.Length}.");
        if (width < Window || height < Window) throw new ArgumentException($"SSIM needs at least {Window}×{Window} pixels; the images are {width}×{height}.");
        double total = 0;
        int positions = 0;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y + Window <= height; y++)
                for (int x = 0; x + Window <= width; x++)
                {
                    double ma = 0, mb = 0, aa = 0, bb = 0, ab = 0;
                    for (int wy = 0; wy < Window; wy++)
                        for (int wx = 0; wx < Window; wx++)
                        {
                            double w = Weights[wy * Window + wx];
                            int i = 3 * ((y + wy) * width + x + wx) + c;
                            double va = a[i], vb = b[i];
                            ma += w * va; mb += w * vb; aa += w * va * va; bb += w * vb * vb; ab += w * va * vb;
                        }
                    double varA = aa - ma * ma, varB = bb - mb * mb, cov = ab - ma * mb;
                    total += (2 * ma * mb + C1) * (2 * cov + C2) / ((ma * ma + mb * mb + C1) * (varA + varB + C2));
                    positions++;
                }
        return total / positions;
    }

    private static double[] GaussianWeights()
    {
        var w = new double[Window * Window];
        int half = Window / 2;
        for (int y = 0; y < Window; y++)
            for (int x = 0; x < Window; x++)
                w[y * Window + x] = Math.Exp(-((x - half) * (x - half) + (y - half) * (y - half)) / (2 * Sigma * Sigma));
        double sum = w.Sum();
        for (int i = 0; i < w.Length; i++) w[i] /= sum;
        return w;
    }
}
