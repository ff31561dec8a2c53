using Onnx;

namespace SdFunctions.Optimizer;

/// <summary>Bakes a static shape into a UNet graph: its named input/output dims become fixed sizes.</summary>
public static class StaticDims
{
    /// <summary>Replaces every dim_param of the graph's inputs and outputs that <paramref name="sizes"/> names.</summary>
    public static void Apply(GraphProto graph, IReadOnlyDictionary<string, long> sizes)
    {
        foreach (var value in graph.Input.Concat(graph.Output))
            foreach (var dim in value.Type?.TensorType?.Shape?.Dim ?? [])
                if (dim.DimParam is { Length: > 0 } name && sizes.TryGetValue(name, out long size))
                    dim.DimValue = size; // setting the value clears the param (protobuf oneof)
    }

    /// <summary>The sizes for a UNet's own dim names: sample [batch, channels, h, w], timestep [1], encoder_hidden_states [batch, 77, hidden].</summary>
    public static Dictionary<string, long> ForUnet(GraphProto graph, int batch, int latentHeight, int latentWidth, int sequenceLength)
    {
        var sizes = new Dictionary<string, long>();
        void Bind(string input, params long?[] want)
        {
            var dims = graph.Input.FirstOrDefault(i => i.Name == input)?.Type?.TensorType?.Shape?.Dim
                ?? throw new InvalidOperationException($"The UNet has no input '{input}'.");
            for (int i = 0; i < dims.Count && i < want.Length; i++)
                if (dims[i].DimParam is { Length: > 0 } p && want[i] is { } v) sizes.TryAdd(p, v);
        }
        Bind("sample", batch, 4, latentHeight, latentWidth);
        Bind("encoder_hidden_states", batch, sequenceLength, null);
        Bind("timestep", 1); // a param shared with the batch (older exports) is already bound above
        return sizes;
    }
}
