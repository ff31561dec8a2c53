using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Google.Protobuf;
using Onnx;

namespace SdFunctions.Optimizer.Quantization;

/// <summary>One node to quantize: which of its inputs are activations, and whether its output is quantized too.</summary>
/// <summary>
/// One node to quantize: which of its inputs are activations, whether its output is quantized too, and for a
/// linear layer the Add that applies its bias (which input of it is the bias).
/// </summary>
public sealed record QdqTarget(NodeProto Node, IReadOnlyList<int> ActivationInputs, bool QuantizeOutput, (NodeProto Add, int Slot)? Bias = null);

/// <summary>The nodes a preset quantizes and the activation tensors whose ranges calibration must measure.</summary>
/// <param name="WeightMax">The largest int8 weight magnitude: 127, or 63 with reduced range (see <see cref="QuantizationOptions.ReduceRange"/>).</param>
public sealed record QdqPlan(IReadOnlyList<QdqTarget> Targets, int WeightMax = 127)
{
    public IReadOnlyList<string> Tensors { get; } = Targets
        .SelectMany(t => t.ActivationInputs.Select(i => t.Node.Input[i]).Concat(t.QuantizeOutput ? [t.Node.Output[0]] : []))
        .Distinct().ToList();
}

/// <summary>
/// Rewrites a float graph into QDQ form, the form ONNX Runtime's CPU provider fuses into integer kernels:
/// QuantizeLinear → DequantizeLinear on each activation, DequantizeLinear on int8 weights. A Conv with quantized
/// input, weight, int32 bias and output becomes QLinearConv; a MatMul with both inputs dequantized becomes
/// MatMulIntegerToFloat (its float output feeds the bias Add directly); an Add with quantized inputs and output
/// becomes QLinearAdd.
/// </summary>
public static partial class QdqQuantizer
{
    /// <summary>Chooses what to quantize. Weights must be initializers (as exported); our Token Merging nodes always stay float.</summary>
    public static QdqPlan Plan(GraphProto graph, QuantizationOptions options)
    {
        var initializers = graph.Initializer.ToDictionary(i => i.Name);
        var constants = graph.Node.Where(n => n.OpType == "Constant").SelectMany(n => n.Output).ToHashSet();
        var graphOutputs = graph.Output.Select(o => o.Name).ToHashSet(); // conv_out stays float: its output is the UNet's result
        bool IsDynamic(string t) => t.Length > 0 && !initializers.ContainsKey(t) && !constants.Contains(t);
        bool IsFloatWeight(string t, int rank) => initializers.TryGetValue(t, out var w)
            && w.DataType == (int)TensorProto.Types.DataType.Float && w.Dims.Count == rank;

        var targets = new List<QdqTarget>();
        foreach (var node in graph.Node)
        {
            if (node.Name.Contains("/tome/", StringComparison.Ordinal)) continue;
            if (options.KeepFloat.Any(k => node.Name.Contains(k, StringComparison.Ordinal)))
            {
                // Weight-only: the time embedding's linear layers keep float activations but store int8 weights
                // (SD 1.5: ~100 MB of float weights, the difference between 0.95 and 0.87 GB on disk).
                if (options.WeightOnlyTimeEmbedding && node.OpType == "Gemm" && IsFloatWeight(node.Input[1], 2) && node.Name.Contains("time_emb", StringComparison.Ordinal))
                    targets.Add(new QdqTarget(node, [], QuantizeOutput: false));
                continue;
            }
            switch (node.OpType)
            {
                case "Conv" when IsDynamic(node.Input[0]) && IsFloatWeight(node.Input[1], 4) && !graphOutputs.Contains(node.Output[0])
                                 && (node.Input.Count < 3 || node.Input[2].Length == 0 || IsFloatWeight(node.Input[2], 1)):
                    targets.Add(new QdqTarget(node, [0], QuantizeOutput: true));
                    break;
                case "MatMul" when IsDynamic(node.Input[0]) && IsFloatWeight(node.Input[1], 2):
                    targets.Add(new QdqTarget(node, [0], QuantizeOutput: false, BiasAdd(node, initializers[node.Input[1]].Dims[1])));
                    break;
                case "MatMul" when options.Preset == QuantizationPreset.Aggressive && IsDynamic(node.Input[0]) && IsDynamic(node.Input[1]):
                    targets.Add(new QdqTarget(node, [0, 1], QuantizeOutput: false));
                    break;
                case "Add" when options.Preset == QuantizationPreset.Aggressive && IsDynamic(node.Input[0]) && IsDynamic(node.Input[1])
                                && ResidualAdd().IsMatch(node.Name):
                    targets.Add(new QdqTarget(node, [0, 1], QuantizeOutput: true));
                    break;
            }
        }
        return new QdqPlan(targets, options.ReduceRange ? 63 : 127);

        // The linear layer's bias: its only reader is an Add of a float [N] initializer.
        (NodeProto, int)? BiasAdd(NodeProto matmul, long n)
        {
            var readers = graph.Node.Where(r => r.Input.Contains(matmul.Output[0])).ToList();
            if (readers is not [{ OpType: "Add" } add]) return null;
            int slot = add.Input[0] == matmul.Output[0] ? 1 : 0;
            return initializers.TryGetValue(add.Input[slot], out var bias) && bias.DataType == (int)TensorProto.Types.DataType.Float
                && bias.Dims.Count == 1 && bias.Dims[0] == n ? (add, slot) : null;
        }
    }

    // The skip connections of resnets, transformer blocks and attention wrappers: ".../resnets.1/Add_1", ".../transformer_blocks.0/Add".
    [GeneratedRegex(@"/(resnets|attentions|transformer_blocks)\.\d+/Add(_\d+)?$")]
    private static partial Regex ResidualAdd();

    /// <summary>
    /// Quantizes the plan's nodes with the measured activation <paramref name="ranges"/>. Float weights are read
    /// (also from external data under <paramref name="weightsDirectory"/>) and replaced by int8 initializers.
    /// Returns how many nodes of each type were quantized.
    /// </summary>
    public static IReadOnlyDictionary<string, int> Apply(ModelProto model, QdqPlan plan, IReadOnlyDictionary<string, ActivationRange> ranges, string weightsDirectory)
    {
        var graph = model.Graph;
        if (model.OpsetImport.FirstOrDefault(o => o.Domain is "" or "ai.onnx") is { Version: < 13 } opset)
            throw new InvalidOperationException($"The UNet is opset {opset.Version}; per-channel QDQ needs opset 13 or later.");
        var initializers = graph.Initializer.ToDictionary(i => i.Name);
        var b = new GraphBuilder(graph, "/quant/");
        var quantized = new Dictionary<string, (string Q, string Dq, float Scale)>(); // activation tensor → its pair
        var tensorOfDq = new Dictionary<string, string>();
        var graphOutputs = graph.Output.Select(o => o.Name).ToHashSet();

        // One Q → DQ pair per activation tensor; the nodes that read it through the pair are rewired below.
        (string Q, string Dq, float Scale) Quantize(string tensor)
        {
            if (quantized.TryGetValue(tensor, out var pair)) return pair;
            if (!ranges.TryGetValue(tensor, out var range))
                throw new InvalidOperationException($"No calibration range for tensor {tensor}.");
            var (scale, zeroPoint) = range.ToUInt8();
            string s = b.Float("scale", [], [scale]);
            string zp = b.Initializer("zero_point", [], [zeroPoint], TensorProto.Types.DataType.Uint8);
            string q = b.Op("QuantizeLinear", [tensor, s, zp]);
            string dq = b.Op("DequantizeLinear", [q, s, zp]);
            tensorOfDq[dq] = tensor;
            return quantized[tensor] = (q, dq, scale);
        }

        var counts = new Dictionary<string, int>();
        foreach (var target in plan.Targets)
        {
            var node = target.Node;
            float inputScale = 0;
            foreach (int i in target.ActivationInputs)
            {
                // An input already rewired (its producer's output was quantized first) is that tensor's pair.
                var (_, dq, scale) = Quantize(tensorOfDq.GetValueOrDefault(node.Input[i], node.Input[i]));
                node.Input[i] = dq;
                inputScale = scale;
            }
            if (node.OpType is "Conv" or "MatMul" or "Gemm" && initializers.TryGetValue(node.Input[1], out var weight))
            {
                // Output channels: Conv W is [M, C, kh, kw]; a linear's W is [K, N], or [N, K] in a Gemm with transB.
                bool transB = node.OpType == "Gemm" && node.Attribute.Any(a => a.Name == "transB" && a.I == 1);
                int axis = node.OpType == "Conv" || transB ? 0 : 1;
                var (dq, weightScales) = QuantizeWeight(b, weight, axis, weightsDirectory, plan.WeightMax);
                node.Input[1] = dq;
                if (node.OpType == "Conv" && node.Input.Count > 2 && node.Input[2].Length > 0)
                    node.Input[2] = QuantizeBias(b, initializers[node.Input[2]], inputScale, weightScales, weightsDirectory);
                // ORT folds MatMul + bias Add into Gemm, and fuses that into an integer QGemm only when the bias is int32 too.
                if (target.Bias is var (add, slot))
                    add.Input[slot] = QuantizeBias(b, initializers[add.Input[slot]], inputScale, weightScales, weightsDirectory);
            }
            if (target.QuantizeOutput && !graphOutputs.Contains(node.Output[0]))
            {
                string output = node.Output[0];
                var (q, dq, _) = Quantize(output);
                foreach (var consumer in graph.Node.Concat(b.Nodes))
                    for (int i = 0; i < consumer.Input.Count; i++)
                        if (consumer.Input[i] == output && !consumer.Output.Contains(q)) consumer.Input[i] = dq;
            }
            counts[node.OpType] = counts.GetValueOrDefault(node.OpType) + 1;
        }

        graph.Node.AddRange(b.Nodes);
        var used = graph.Node.SelectMany(n => n.Input).ToHashSet();
        foreach (var unused in graph.Initializer.Where(i => !used.Contains(i.Name)).ToList()) graph.Initializer.Remove(unused);
        GraphEdits.SortTopologically(graph);
        return counts;
    }

    /// <summary>Per-channel symmetric int8 ([−max, max], zero point 0) along <paramref name="axis"/>.</summary>
    private static (string Dq, float[] Scales) QuantizeWeight(GraphBuilder b, TensorProto weight, int axis, string weightsDirectory, int max)
    {
        float[] w = ModelFiles.ReadFloats(weight, weightsDirectory);
        long[] dims = [.. weight.Dims];
        int channels = (int)dims[axis];
        int inner = (int)dims.Skip(axis + 1).Aggregate(1L, (x, y) => x * y); // elements between two of a channel's runs
        var maxAbs = new float[channels];
        for (int k = 0; k < w.Length; k++)
        {
            int c = k / inner % channels;
            maxAbs[c] = Math.Max(maxAbs[c], Math.Abs(w[k]));
        }
        float[] scales = maxAbs.Select(m => m > 0 ? m / max : 1f).ToArray();
        var q = new sbyte[w.Length];
        for (int k = 0; k < w.Length; k++)
            q[k] = (sbyte)Math.Clamp(MathF.Round(w[k] / scales[k / inner % channels], MidpointRounding.ToEven), -max, max);
        string qName = b.Initializer("weight", dims, q, TensorProto.Types.DataType.Int8);
        string s = b.Float("weight_scale", [channels], scales);
        string zp = b.Initializer("weight_zero_point", [channels], new sbyte[channels], TensorProto.Types.DataType.Int8);
        return (b.Op("DequantizeLinear", [qName, s, zp], ("axis", (long)axis)), scales);
    }

    /// <summary>Bias as int32 at scale input·weight per channel: what QLinearConv adds inside its integer accumulator.</summary>
    private static string QuantizeBias(GraphBuilder b, TensorProto bias, float inputScale, float[] weightScales, string weightsDirectory)
    {
        float[] values = ModelFiles.ReadFloats(bias, weightsDirectory);
        float[] scales = weightScales.Select(s => s * inputScale).ToArray();
        var q = new int[values.Length];
        for (int c = 0; c < q.Length; c++)
            q[c] = (int)Math.Clamp(Math.Round((double)values[c] / scales[c], MidpointRounding.ToEven), int.MinValue, int.MaxValue);
        string qName = b.Initializer("bias", [q.Length], q, TensorProto.Types.DataType.Int32);
        return b.Op("DequantizeLinear", [qName, b.Float("bias_scale", [q.Length], scales)], ("axis", 0L));
    }
}

/// <summary>The range of values an activation took during calibration.</summary>
public readonly record struct ActivationRange(float Min, float Max)
{
    public ActivationRange Include(float min, float max) => new(Math.Min(Min, min), Math.Max(Max, max));

    /// <summary>Asymmetric uint8 over [min(Min, 0), max(Max, 0)]: zero maps to an exact integer.</summary>
    public (float Scale, byte ZeroPoint) ToUInt8()
    {
        float lo = Math.Min(Min, 0f), hi = Math.Max(Max, 0f);
        if (!float.IsFinite(lo) || !float.IsFinite(hi)) throw new InvalidOperationException($"Calibration saw non-finite values ({Min}, {Max}).");
        float scale = hi > lo ? (hi - lo) / 255f : 1f;
        return (scale, (byte)Math.Clamp(MathF.Round(-lo / scale), 0, 255));
    }
}
