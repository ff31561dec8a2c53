using Onnx;

namespace SdFunctions.Optimizer;

/// <summary>
/// Removes the exporters' <c>baddbmm(torch.empty(...), beta=0)</c> remnant in attention: Add(x, Mul(ConstantOfShape(0), c)).
/// Adding zero changes nothing, but once shapes are static ORT constant-folds the zeros into [batch·heads, tokens, tokens]
/// initializers: seconds of session creation and a saved graph ~70× the tiny UNet (≈1 GB per block at SD 1.5 size).
/// </summary>
public static class ZeroAddRemoval
{
    public static int Apply(GraphProto graph)
    {
        var nodes = graph.Node;
        var producer = nodes.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(t => t.o, t => t.n);
        int removed = 0;
        foreach (var add in nodes.Where(n => n.OpType == "Add").ToList())
        {
            int zeroSide = Enumerable.Range(0, 2).FirstOrDefault(i => IsZeros(add.Input[i], producer), -1);
            if (zeroSide < 0) continue;
            string kept = add.Input[1 - zeroSide], gone = add.Output[0];
            if (graph.Output.Any(o => o.Name == gone)) continue; // keep the graph's interface as it is
            foreach (var n in nodes)
                for (int i = 0; i < n.Input.Count; i++)
                    if (n.Input[i] == gone) n.Input[i] = kept;
            nodes.Remove(add);
            removed++;
        }
        if (removed > 0) GraphEdits.RemoveDeadNodes(graph);
        return removed;
    }

    // Mul(ConstantOfShape with value 0, anything) — exactly zero for any finite multiplier.
    private static bool IsZeros(string tensor, Dictionary<string, NodeProto> producer) =>
        producer.TryGetValue(tensor, out var mul) && mul.OpType == "Mul"
        && mul.Input.Any(i => producer.TryGetValue(i, out var c) && c.OpType == "ConstantOfShape" && FillsZero(c));

    private static bool FillsZero(NodeProto constantOfShape)
    {
        var value = constantOfShape.Attribute.FirstOrDefault(a => a.Name == "value")?.T;
        if (value is null) return true; // the default fill is 0
        if (value.DataType != (int)TensorProto.Types.DataType.Float) return false;
        float v = value.FloatData.Count > 0 ? value.FloatData[0] : BitConverter.ToSingle(value.RawData.Span);
        return v == 0f;
    }
}
