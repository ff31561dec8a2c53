using Microsoft.Extensions.Logging.Abstractions;
using Onnx;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Optimizer.Quantization;

/// <summary>What ONNX Runtime actually runs for a graph: op counts of the graph it saves after optimizing.</summary>
public static class KernelReport
{
    /// <summary>Ops that compute in 8-bit integers on the CPU provider (QDQ groups fused by ORT).</summary>
    public static readonly IReadOnlySet<string> IntegerOps = new HashSet<string>(StringComparer.Ordinal)
    {
        "QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "DynamicQuantizeMatMul",
        "QGemm", "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearConcat", "QLinearAveragePool", "QLinearSigmoid",
    };

    /// <summary>Op type → count in the optimized graph of <paramref name="modelPath"/>, at the shapes fixed in the graph.</summary>
    public static async Task<IReadOnlyDictionary<string, int>> CountOpsAsync(string modelPath, SessionSettings settings, CancellationToken ct)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"sdf-kernels-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string saved = Path.Combine(dir, "model.onnx");
            new OnnxSessionFactory(settings, NullLogger.Instance).SaveOptimizedGraph(modelPath, new Dictionary<string, long>(), saved);
            var graph = (await ModelFiles.ReadAsync(saved, ct)).Graph;
            return graph.Node.GroupBy(n => n.OpType).OrderBy(g => g.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
