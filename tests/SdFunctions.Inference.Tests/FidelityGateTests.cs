using System.Text.Json;
using SdFunctions.Cli;

namespace SdFunctions.Inference.Tests;

/// <summary><c>sdf optimize</c> measures what it made against its source, writes the figures, and refuses a bundle under --min-psnr.</summary>
public class FidelityGateTests
{
    private static async Task<(int Code, string Err)> Optimize(string output, params string[] more)
    {
        var (code, _, err) = await CliRun.Run(["optimize", "-m", CliApp.BundledModel, "--out", output, "--tome-ratio", "0.4", "--calibration-steps", "25", .. more]);
        return (code, err);
    }

    [Fact]
    public async Task TheManifestHoldsTheBundlesDistanceFromItsSource()
    {
        string output = Fixtures.TempDirectory("fidelity");
        var (code, err) = await Optimize(output);
        Assert.True(code == CliApp.Ok, err);
        var fidelity = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, Optimizer.OptimizeManifest.FileName))).RootElement.GetProperty("fidelity");
        Assert.Equal((6, 25), (fidelity.GetProperty("prompts").GetInt32(), fidelity.GetProperty("steps").GetInt32())); // the card's prompts
        var ranges = fidelity.GetProperty("uNetError").EnumerateArray().ToList();
        Assert.Equal([0, 250, 500, 750], ranges.Select(r => r.GetProperty("from").GetInt32()));
        // Merged tokens move the noise prediction a little, and most where the picture's detail forms (low t).
        Assert.All(ranges, r => Assert.InRange(r.GetProperty("meanRelativeL2").GetDouble(), 1e-4, 0.3));
        Assert.True(ranges[0].GetProperty("meanRelativeL2").GetDouble() > ranges[3].GetProperty("meanRelativeL2").GetDouble());
        Assert.InRange(fidelity.GetProperty("psnr").GetProperty("median").GetDouble(), 15, 60);
        Assert.Equal(6, fidelity.GetProperty("sourceAccuracy").GetProperty("total").GetInt32());
        Assert.Contains("fidelity: PSNR against the source median", err);
    }

    [Fact]
    public async Task ABundleUnderTheFloorIsRefusedAndNothingIsWritten()
    {
        string output = Fixtures.TempDirectory("fidelity-refused");
        var (code, err) = await Optimize(output, "--min-psnr", "99");
        Assert.Equal(CliApp.Failed, code);
        Assert.Contains("below --min-psnr 99; nothing was written", err);
        Assert.Single(err.Trim().Split('\n'), l => l.StartsWith("sdf:"));
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetDirectories(Path.GetDirectoryName(output)!, Path.GetFileName(output) + ".partial-*"));

        var (noCheck, why) = await Optimize(output, "--min-psnr", "20", "--no-fidelity");
        Assert.Equal(CliApp.BadInput, noCheck);
        Assert.Contains("--min-psnr needs the fidelity check", why);
    }
}
