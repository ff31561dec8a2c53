using Google.Protobuf;
using Onnx;

namespace SdFunctions.Optimizer;

/// <summary>
/// Builds nodes and initializers to splice into a graph: every name gets the builder's prefix and a counter,
/// constants become initializers, attributes are given as (name, value) pairs (long, long[], float, string).
/// </summary>
internal sealed class GraphBuilder(GraphProto graph, string prefix)
{
    private readonly List<NodeProto> _nodes = [];
    private int _next;

    private string Name(string hint) => $"{prefix}{hint}_{_next++}";

    /// <summary>The nodes built so far, in the order they were built.</summary>
    public IReadOnlyList<NodeProto> Nodes => _nodes;

    public string Op(string opType, string[] inputs, params (string Name, object Value)[] attributes) =>
        OpN(opType, inputs, 1, attributes)[0];

    public string[] OpN(string opType, string[] inputs, int outputs, params (string Name, object Value)[] attributes)
    {
        string name = Name(opType);
        var node = new NodeProto { Name = name, OpType = opType };
        node.Input.AddRange(inputs);
        for (int i = 0; i < outputs; i++) node.Output.Add($"{name}_output_{i}");
        foreach (var (attrName, value) in attributes) node.Attribute.Add(Attribute(attrName, value));
        _nodes.Add(node);
        return [.. node.Output];
    }

    public string Unsqueeze(string x) => Op("Unsqueeze", [x, Int64("axes", [1], [2])]);

    public string Expand(string x, long[] shape) => Op("Expand", [x, Int64("shape", [shape.Length], shape)]);

    public string Int64(string hint, long[] dims, long[] values) => Initializer(hint, dims, values, TensorProto.Types.DataType.Int64);

    public string Float(string hint, long[] dims, float[] values) => Initializer(hint, dims, values, TensorProto.Types.DataType.Float);

    public string Initializer<T>(string hint, long[] dims, T[] values, TensorProto.Types.DataType type) where T : unmanaged
    {
        var tensor = new TensorProto { Name = Name(hint), DataType = (int)type };
        tensor.Dims.AddRange(dims);
        tensor.RawData = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>The nodes built so far, split before the node that produces <paramref name="at"/>.</summary>
    public (List<NodeProto> Before, List<NodeProto> From) Split(string at)
    {
        int index = _nodes.FindIndex(n => n.Output.Contains(at));
        return (_nodes[..index], _nodes[index..]);
    }

    private static AttributeProto Attribute(string name, object value)
    {
        var a = new AttributeProto { Name = name };
        switch (value)
        {
            case long l: a.Type = AttributeProto.Types.AttributeType.Int; a.I = l; break;
            case long[] ls: a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.AddRange(ls); break;
            case float f: a.Type = AttributeProto.Types.AttributeType.Float; a.F = f; break;
            case string s: a.Type = AttributeProto.Types.AttributeType.String; a.S = ByteString.CopyFromUtf8(s); break;
            default: throw new ArgumentException($"attribute {name}: unsupported value type {value.GetType().Name}");
        }
        return a;
    }
}
