using System.Runtime.InteropServices;
using Onnx;

namespace SdFunctions.Optimizer;

/// <summary>
/// Replaces each exported attention (head split Reshape/Transpose → MatMul → Mul(scale) → Softmax → MatMul → head merge)
/// with ONNX Runtime's fused <c>com.microsoft.MultiHeadAttention</c>, fed straight by the to_q/to_k/to_v projections.
/// The fused CPU kernel never materializes the exported graph's reshaped copies, and can tile the score matrix instead
/// of holding [batch·heads, tokens, tokens] floats at once. Attentions that do not match the pattern are left as they are.
/// </summary>
public static class AttentionFusion
{
    public const string Domain = "com.microsoft";

    /// <summary>Fuses every matching attention; returns how many.</summary>
    public static int Apply(ModelProto model)
    {
        var graph = model.Graph;
        var producer = graph.Node.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(t => t.o, t => t.n);
        var readers = graph.Node.SelectMany(n => n.Input.Select(i => (i, n))).ToLookup(t => t.i, t => t.n);
        var prefixes = graph.Node.Select(n => n.Name).Where(n => n.EndsWith("/to_out.0/MatMul", StringComparison.Ordinal))
            .Select(n => n[..^"to_out.0/MatMul".Length]).ToList();
        int fused = 0;
        foreach (string prefix in prefixes)
        {
            NodeProto? Named(string name) => graph.Node.FirstOrDefault(n => n.Name == prefix + name);
            if (Named("to_q/MatMul") is not { } q || Named("to_k/MatMul") is not { } k || Named("to_v/MatMul") is not { } v
                || Named("to_out.0/MatMul") is not { } output || Named("MatMul") is not { } scores) continue;
            // scale: Mul(scores, constant) read by the Softmax.
            if (readers[scores.Output[0]].SingleOrDefault() is not { OpType: "Mul" } mul
                || readers[mul.Output[0]].SingleOrDefault() is not { OpType: "Softmax" }
                || mul.Input.Select(i => ConstantValue(i, producer, graph)).FirstOrDefault(c => c is { Length: 1 }) is not { } scale) continue;
            // heads: the constant in the [batch, tokens, heads, head_dim] shape that splits the query.
            if (readers[q.Output[0]].FirstOrDefault(n => n.OpType == "Reshape") is not { } split
                || !producer.TryGetValue(split.Input[1], out var shape) || shape.OpType != "Concat" || shape.Input.Count != 4
                || ConstantValue(shape.Input[2], producer, graph) is not [var heads] || heads < 1) continue;

            var node = new NodeProto { Name = prefix + "MultiHeadAttention", OpType = "MultiHeadAttention", Domain = Domain };
            node.Input.AddRange([q.Output[0], k.Output[0], v.Output[0]]);
            node.Output.Add(prefix + "MultiHeadAttention_output_0");
            node.Attribute.Add(new AttributeProto { Name = "num_heads", Type = AttributeProto.Types.AttributeType.Int, I = (long)heads });
            node.Attribute.Add(new AttributeProto { Name = "scale", Type = AttributeProto.Types.AttributeType.Float, F = (float)scale[0] });
            graph.Node.Add(node);
            output.Input[0] = node.Output[0];
            fused++;
        }
        if (fused == 0) return 0;
        if (model.OpsetImport.All(o => o.Domain != Domain)) model.OpsetImport.Add(new OperatorSetIdProto { Domain = Domain, Version = 1 });
        GraphEdits.RemoveDeadNodes(graph);
        GraphEdits.SortTopologically(graph);
        return fused;
    }

    /// <summary>The values of a tensor given by a Constant node or an initializer (float or int64), else null.</summary>
    private static double[]? ConstantValue(string tensor, Dictionary<string, NodeProto> producer, GraphProto graph)
    {
        var t = producer.TryGetValue(tensor, out var c) && c.OpType == "Constant" ? c.Attribute.FirstOrDefault(a => a.Name == "value")?.T
            : graph.Initializer.FirstOrDefault(i => i.Name == tensor);
        if (t is null || ModelFiles.IsExternal(t)) return null;
        return (TensorProto.Types.DataType)t.DataType switch
        {
            TensorProto.Types.DataType.Float => t.FloatData.Count > 0 ? t.FloatData.Select(f => (double)f).ToArray()
                : MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray().Select(f => (double)f).ToArray(),
            TensorProto.Types.DataType.Int64 => t.Int64Data.Count > 0 ? t.Int64Data.Select(l => (double)l).ToArray()
                : MemoryMarshal.Cast<byte, long>(t.RawData.Span).ToArray().Select(l => (double)l).ToArray(),
            _ => null,
        };
    }
}
