using Onnx;

namespace SdFunctions.Optimizer.Quantization;

/// <summary>
/// INT8 weights for the text encoder, rewritten in place: weight-only, as optimum-intel's hybrid quantization treats every
/// component but the UNet. The encoder runs once per request (a fraction of a second), so integer kernels would buy little
/// time, while its weights are a third of what a generation keeps resident: stored as int8 (per output channel for the
/// linear layers, per row for the token embedding) they are dequantized where they are read, and activations stay float,
/// so no calibration and no activation outliers to clip (CLIP has some).
/// </summary>
public static class TextEncoderQuantizer
{
    /// <summary>Embedding tables smaller than this stay float (the 77-row position embedding): nothing worth saving, and every token reads them.</summary>
    public const long MinTableElements = 256 * 1024;

    public sealed record Result(IReadOnlyDictionary<string, int> QuantizedNodes, long WeightBytesBefore, long WeightBytesAfter);

    /// <summary>Quantizes <paramref name="encoderDirectory"/>/model.onnx (its weights read from and written to that folder).</summary>
    public static async Task<Result> QuantizeAsync(string encoderDirectory, CancellationToken ct)
    {
        var model = await ModelFiles.ReadAsync(Path.Combine(encoderDirectory, "model.onnx"), ct);
        long before = ModelFiles.InitializerBytes(model);
        var graph = model.Graph;
        var initializers = graph.Initializer.ToDictionary(i => i.Name);
        bool IsFloatMatrix(string t) => initializers.TryGetValue(t, out var w) && w.DataType == (int)TensorProto.Types.DataType.Float && w.Dims.Count == 2;

        var linear = graph.Node.Where(n => n.OpType is "MatMul" or "Gemm" && n.Input.Count > 1 && IsFloatMatrix(n.Input[1]))
            .Select(n => new QdqTarget(n, [], QuantizeOutput: false)).ToList();
        var tables = graph.Node.Where(n => n.OpType == "Gather" && IsFloatMatrix(n.Input[0]) && n.Attribute.All(a => a.Name != "axis" || a.I == 0)
            && initializers[n.Input[0]].Dims.Aggregate(1L, (x, y) => x * y) >= MinTableElements).ToList();
        if (linear.Count == 0) throw new InvalidOperationException("The text encoder has no MatMul or Gemm with initializer weights to quantize.");

        // The tables first: QdqQuantizer.Apply then drops the float initializers nothing reads any more and sorts the graph.
        var b = new GraphBuilder(graph, "/quant_table/");
        foreach (var gather in tables)
        {
            string dequantized = QuantizeTable(b, gather, initializers[gather.Input[0]], encoderDirectory);
            foreach (var reader in graph.Node.Concat(b.Nodes))
                for (int i = 0; i < reader.Input.Count; i++)
                    if (reader.Input[i] == gather.Output[0]) reader.Input[i] = dequantized;
            graph.Node.Remove(gather);
        }
        graph.Node.AddRange(b.Nodes);
        var counts = new Dictionary<string, int>(QdqQuantizer.Apply(model, new QdqPlan(linear), new Dictionary<string, ActivationRange>(), encoderDirectory));
        if (tables.Count > 0) counts["Gather"] = tables.Count;

        await ModelFiles.WriteAsync(model, encoderDirectory, encoderDirectory, ct);
        return new Result(counts, before, ModelFiles.InitializerBytes(model));
    }

    /// <summary>
    /// The dequantized rows of an embedding lookup over int8 rows, each with its own scale: Gather(rows) → Cast → Mul(Gather(scales)). Per row, because
    /// a token's vector is what the encoder reads whole; one scale per column would let the largest token set every token's step.
    /// </summary>
    private static string QuantizeTable(GraphBuilder b, NodeProto gather, TensorProto table, string weightsDirectory)
    {
        float[] values = ModelFiles.ReadFloats(table, weightsDirectory);
        int rows = (int)table.Dims[0], width = (int)table.Dims[1];
        var scales = new float[rows];
        var q = new sbyte[values.Length];
        for (int r = 0; r < rows; r++)
        {
            var row = values.AsSpan(r * width, width);
            float max = 0;
            foreach (float v in row) max = Math.Max(max, Math.Abs(v));
            scales[r] = max > 0 ? max / 127 : 1f;
            for (int c = 0; c < width; c++) q[r * width + c] = (sbyte)Math.Clamp(MathF.Round(row[c] / scales[r], MidpointRounding.ToEven), -127, 127);
        }
        string ids = gather.Input[1];
        string quantizedRows = b.Op("Gather", [b.Initializer("table", [rows, width], q, TensorProto.Types.DataType.Int8), ids]);
        string rowScales = b.Op("Gather", [b.Float("table_scale", [rows, 1], scales), ids]);
        string floats = b.Op("Cast", [quantizedRows], ("to", (long)TensorProto.Types.DataType.Float));
        return b.Op("Mul", [floats, rowScales]);
    }
}
