using System.Text.RegularExpressions;
using Google.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Optimizer.Quantization;

/// <summary>One layer group's harm: the UNet's output error with only this group quantized.</summary>
public sealed record LayerGroupError(string Group, int Nodes, double RelativeL2);

/// <summary>What sensitivity-guided mixed precision chose: every group's error alone, the groups kept float, the error before and after.</summary>
public sealed record MixedPrecisionChoice(double Budget, int Inputs, double FullError, IReadOnlyList<LayerGroupError> Groups, IReadOnlyList<string> KeptFloat, double FinalError);

/// <summary>
/// Sensitivity-guided mixed precision: each layer group (a block's resnet, attention, up/downsampler, or a top-level layer) is
/// quantized alone and the UNet's output error (relative L2 against float, averaged over calibration inputs) measured; then the
/// most harmful groups stay float, one at a time, until the whole model's error is within the budget.
/// </summary>
public static partial class SensitivityAnalysis
{
    [GeneratedRegex(@"^/((?:down_blocks|up_blocks)\.\d+/(?:attentions|resnets|downsamplers|upsamplers)\.\d+|mid_block/(?:attentions|resnets)\.\d+|[^/]+)/")]
    private static partial Regex Group();

    /// <summary>The layer group a node belongs to, as a node-name prefix that <see cref="QuantizationOptions.KeepFloat"/> matches.</summary>
    public static string GroupOf(string nodeName) => Group().Match(nodeName) is { Success: true } m ? $"/{m.Groups[1].Value}/" : nodeName;

    /// <param name="inputs">The calibration inputs to measure on (a few, spread over the timesteps).</param>
    public static MixedPrecisionChoice Choose(ModelProto model, string unetDir, QuantizationOptions quantization, IReadOnlyDictionary<string, ActivationRange> ranges,
        IReadOnlyList<UNetInputs> inputs, double budget, SessionSettings session, IProgress<string>? progress, CancellationToken ct)
    {
        var groups = QdqQuantizer.Plan(model.Graph, quantization).Targets.GroupBy(t => GroupOf(t.Node.Name)).ToDictionary(g => g.Key, g => g.Count());
        var reference = Run(model, unetDir, inputs, session);
        double ErrorWith(IReadOnlySet<string> quantized)
        {
            ct.ThrowIfCancellationRequested();
            var trial = model.Clone();
            var options = quantization with { KeepFloat = [.. quantization.KeepFloat, .. groups.Keys.Where(g => !quantized.Contains(g))] };
            QdqQuantizer.Apply(trial, QdqQuantizer.Plan(trial.Graph, options), ranges, unetDir);
            var outputs = Run(trial, unetDir, inputs, session);
            return reference.Zip(outputs, RelativeL2).Average();
        }

        var alone = new List<LayerGroupError>();
        foreach (var (group, nodes) in groups)
        {
            alone.Add(new LayerGroupError(group, nodes, ErrorWith(new HashSet<string> { group })));
            progress?.Report($"sensitivity: {group} alone {alone[^1].RelativeL2:P2} ({alone.Count}/{groups.Count})");
        }
        var quantizedGroups = groups.Keys.ToHashSet();
        double full = ErrorWith(quantizedGroups), error = full;
        var kept = new List<string>();
        foreach (var worst in alone.OrderByDescending(g => g.RelativeL2))
        {
            if (error <= budget) break;
            quantizedGroups.Remove(worst.Group);
            kept.Add(worst.Group);
            error = quantizedGroups.Count == 0 ? 0 : ErrorWith(quantizedGroups);
            progress?.Report($"sensitivity: {worst.Group} kept float, error {error:P2} (budget {budget:P2})");
        }
        return new MixedPrecisionChoice(budget, inputs.Count, full, [.. alone.OrderByDescending(g => g.RelativeL2)], kept, error);
    }

    /// <summary>Every input through <paramref name="model"/> (written beside the weights it refers to, then removed): its outputs.</summary>
    private static List<float[]> Run(ModelProto model, string unetDir, IReadOnlyList<UNetInputs> inputs, SessionSettings session)
    {
        string path = Path.Combine(unetDir, $"sensitivity-{Guid.NewGuid():N}.onnx");
        File.WriteAllBytes(path, model.ToByteArray());
        try
        {
            var factory = new OnnxSessionFactory(session with { OptimizedModelCacheDirectory = null }, NullLogger.Instance);
            using var created = factory.Create("sensitivity", path, new Dictionary<string, long>()).Session;
            using var run = new RunOptions();
            string output = created.OutputMetadata.Keys.First();
            var outputs = new List<float[]>();
            foreach (var input in inputs)
            {
                var feeds = Calibration.UNetFeeds(model.Graph, input);
                try
                {
                    using var results = created.Run(run, feeds.Select(f => f.Item1).ToList(), feeds.Select(f => f.Item2).ToList(), [output]);
                    outputs.Add(results[0].GetTensorDataAsSpan<float>().ToArray());
                }
                finally { foreach (var f in feeds) f.Item2.Dispose(); }
            }
            return outputs;
        }
        finally { File.Delete(path); }
    }

    private static double RelativeL2(float[] expected, float[] actual)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++) { double d = actual[i] - (double)expected[i]; num += d * d; den += (double)expected[i] * expected[i]; }
        return Math.Sqrt(num / Math.Max(den, 1e-30));
    }
}
