using SdFunctions.Inference.Quality;

namespace SdFunctions.Inference.Tests;

/// <summary>PSNR and the Gaussian-window SSIM of Wang et al. on pictures whose answer is known in closed form.</summary>
public class ImageQualityTests
{
    private static byte[] Filled(byte value, int w = 16, int h = 16) => Enumerable.Repeat(value, w * h * 3).ToArray();

    [Fact]
    public void EqualPicturesAreInfinitePsnrAndSsimOne()
    {
        var rgb = Fixtures.Bytes("shapes", "ddim/image_uint8");
        Assert.Equal(double.PositiveInfinity, ImageQuality.Psnr(rgb, rgb));
        Assert.Equal(1.0, ImageQuality.Ssim(rgb, rgb, 64, 64), 12);
    }

    [Fact]
    public void FlatPicturesMatchTheFormula()
    {
        // No variance: SSIM is the luminance term alone, (2 μa μb + C1) / (μa² + μb² + C1), C1 = (0.01·255)².
        double c1 = Math.Pow(0.01 * 255, 2), expected = (2 * 100.0 * 110 + c1) / (100.0 * 100 + 110.0 * 110 + c1);
        Assert.Equal(expected, ImageQuality.Ssim(Filled(100), Filled(110), 16, 16), 10); // the window sums leave ~1e-13
        // A difference of 10 levels everywhere: MSE 100, PSNR = 10 log10(255² / 100).
        Assert.Equal(10 * Math.Log10(255.0 * 255 / 100), ImageQuality.Psnr(Filled(100), Filled(110)), 12);
    }

    [Fact]
    public void MoreNoiseIsLowerSsimAndTheOrderOfArgumentsDoesNotMatter()
    {
        var reference = Fixtures.Bytes("shapes", "pndm/image_uint8");
        byte[] Noisy(int amplitude)
        {
            var rng = new Random(1);
            return [.. reference.Select(v => (byte)Math.Clamp(v + rng.Next(-amplitude, amplitude + 1), 0, 255))];
        }
        double slight = ImageQuality.Ssim(reference, Noisy(8), 64, 64), heavy = ImageQuality.Ssim(reference, Noisy(60), 64, 64);
        Assert.InRange(slight, heavy + 0.1, 0.999);
        Assert.Equal(slight, ImageQuality.Ssim(Noisy(8), reference, 64, 64), 12);
        Assert.Throws<ArgumentException>(() => ImageQuality.Ssim(Filled(1, 8, 8), Filled(1, 8, 8), 8, 8)); // smaller than the window
    }
}
