using System.Text.Json;
using Onnx;
using SdFunctions.Cli;
using SdFunctions.Optimizer;

namespace SdFunctions.Inference.Tests;

/// <summary>The calibration methods of sdf optimize on the bundled trained model: percentile ranges and sensitivity-guided mixed precision.</summary>
public class CalibrationMethodTests
{
    private static async Task<string> OptimizeAsync(string name, params string[] more)
    {
        string dir = Fixtures.TempDirectory(name);
        var (code, _, err) = await CliRun.Run(["optimize", "--out", dir, "--quantize", "int8", "--no-fidelity", "--calibration-steps", "10", .. more]);
        Assert.True(code == CliApp.Ok, err);
        return dir;
    }

    /// <summary>Each activation's uint8 scale (its QuantizeLinear's), by the tensor it quantizes.</summary>
    private static Dictionary<string, float> ActivationScales(string bundle)
    {
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(bundle, "unet", "model.onnx")));
        var scalars = model.Graph.Initializer.Where(t => t.Dims.Count == 0 && t.DataType == (int)TensorProto.Types.DataType.Float)
            .ToDictionary(t => t.Name, t => BitConverter.ToSingle(t.RawData.Span));
        return model.Graph.Node.Where(n => n.OpType == "QuantizeLinear" && scalars.ContainsKey(n.Input[1])).ToDictionary(n => n.Input[0], n => scalars[n.Input[1]]);
    }

    private static JsonElement Quantization(string bundle) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(bundle, OptimizeManifest.FileName))).RootElement.GetProperty("quantization");

    [Fact]
    public async Task PercentileRangesAreNarrowerThanMinMaxWhereARunHasSpikes()
    {
        var minMax = ActivationScales(await OptimizeAsync("ranges-minmax", "--quantize-ranges", "minmax"));
        string percentileBundle = await OptimizeAsync("ranges-p99", "--quantize-ranges", "percentile", "--quantize-percentile", "99");
        var percentile = ActivationScales(percentileBundle);
        Assert.Equal(minMax.Keys.Order(), percentile.Keys.Order());
        Assert.All(minMax, a => Assert.True(percentile[a.Key] <= a.Value * (1 + 1e-6), $"{a.Key}: percentile scale {percentile[a.Key]} > min-max {a.Value}"));
        Assert.True(minMax.Count(a => percentile[a.Key] < 0.9 * a.Value) > minMax.Count / 4, "99 % of each run should clip a quarter of the ranges by 10 %");
        Assert.Equal("percentile 99", Quantization(percentileBundle).GetProperty("rangeMethod").GetString());
    }

    [Fact]
    public async Task MixedPrecisionKeepsTheMostHarmfulGroupsFloatUntilTheBudgetIsMet()
    {
        string bundle = await OptimizeAsync("mixed", "--quantize-error-budget", "0.01");
        var q = Quantization(bundle);
        var choice = q.GetProperty("mixedPrecision");
        var groups = choice.GetProperty("groups").EnumerateArray().Select(g => g.GetProperty("relativeL2").GetDouble()).ToList();
        Assert.Equal(groups.OrderDescending(), groups); // worst first
        string[] kept = [.. choice.GetProperty("keptFloat").EnumerateArray().Select(k => k.GetString()!)];
        Assert.NotEmpty(kept);
        Assert.Equal(choice.GetProperty("groups").EnumerateArray().Take(kept.Length).Select(g => g.GetProperty("group").GetString()), kept);
        Assert.True(choice.GetProperty("fullError").GetDouble() > 0.01);
        Assert.InRange(choice.GetProperty("finalError").GetDouble(), 0, 0.01);
        // The kept groups' nodes run in float: none of their Conv/MatMul reads a dequantized weight.
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(bundle, "unet", "model.onnx")));
        var dequantized = model.Graph.Node.Where(n => n.OpType == "DequantizeLinear").Select(n => n.Output[0]).ToHashSet();
        Assert.DoesNotContain(model.Graph.Node, n => n.OpType is "Conv" or "MatMul" && kept.Any(k => n.Name.Contains(k)) && n.Input.Count > 1 && dequantized.Contains(n.Input[1]));

        // --keep-float by hand: the named group's nodes stay float, and the manifest says so.
        string manual = await OptimizeAsync("keep-float", "--keep-float", kept[0]);
        Assert.Contains(kept[0], Quantization(manual).GetProperty("keepFloat").EnumerateArray().Select(k => k.GetString()));
        Assert.True(Quantization(manual).GetProperty("quantizedNodes").EnumerateObject().Sum(n => n.Value.GetInt32())
            < Quantization(await OptimizeAsync("all-groups")).GetProperty("quantizedNodes").EnumerateObject().Sum(n => n.Value.GetInt32()));
    }
}
