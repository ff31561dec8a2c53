using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Onnx;

namespace SdFunctions.Inference.Models;

/// <summary>
/// Turns the shapes the pipeline will feed into free-dimension overrides keyed by the model's own dim names
/// (optimum's batch_size/height/width/sequence_length, the old exporter's batch/channels/…), so ORT plans
/// every buffer once. A fixed dim that disagrees with the wanted size is an error naming the file.
/// </summary>
internal static class StaticShapes
{
    public static void Bind(OnnxModelInfo model, string inputName, long[] shape, Dictionary<string, long> overrides)
    {
        var input = model.FindInput(inputName)!;
        if (input.Dims.Count != shape.Length)
            throw new ModelBundleException($"{model.Path}: input '{inputName}' has rank {input.Dims.Count}; expected {shape.Length}.");
        for (int i = 0; i < shape.Length; i++)
        {
            var dim = input.Dims[i];
            if (dim.Value is { } fixedSize && fixedSize != shape[i] && fixedSize > 0)
                throw new ModelBundleException(
                    $"{model.Path}: input '{inputName}' dim {i} is fixed at {fixedSize}, but the pipeline needs {shape[i]} " +
                    $"(shape [{string.Join(", ", shape)}]). Re-export the model or choose a size it supports.");
            if (dim.Param is { } name)
            {
                if (overrides.TryGetValue(name, out long bound) && bound != shape[i])
                    throw new ModelBundleException(
                        $"{model.Path}: dim '{name}' would have to be both {bound} and {shape[i]}; the model's dims cannot be made static.");
                overrides[name] = shape[i];
            }
        }
    }

    /// <summary>A shape for an input whose size is free: named dims already bound keep their value, others get 1.</summary>
    public static long[] Resolve(OnnxModelInfo model, string inputName, IReadOnlyDictionary<string, long> overrides) =>
        model.FindInput(inputName)!.Dims
            .Select(d => d.Value is > 0 ? d.Value.Value : d.Param is { } p && overrides.TryGetValue(p, out long v) ? v : 1L)
            .ToArray();

    /// <summary>A fixed dim of an input or output, or null when the model leaves it free.</summary>
    public static long? FixedDim(OnnxValueInfo value, int index) =>
        index < value.Dims.Count && value.Dims[index].Value is > 0 ? value.Dims[index].Value : null;
}
