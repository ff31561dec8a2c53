using System.Text.RegularExpressions;
using Google.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Optimizer;

/// <summary>
/// DeepCache (Ma et al., CVPR 2024) as two graphs cut from a finished UNet graph, both reading the UNet's own weights file:
/// a full graph that also outputs the deep feature a cached step reuses (<see cref="ModelBundle.DeepFeature"/>), and a
/// shallow graph that takes that feature as an input and keeps only what DeepCache's helper runs on a cached step.
/// Branch b is DeepCache's <c>cache_branch_id</c>: up block (reversed) b / 3, layer (reversed) b % 3. The feature is what
/// that layer's resnet concatenates with its skip connection; the shallow graph is every node <c>out_sample</c> still
/// needs once that tensor is given — for branch 0 conv_in, the time embedding, the last up block's last resnet and
/// attention, conv_out, exactly the modules the helper runs (see the reference README).
/// </summary>
public static partial class DeepCacheSplitter
{
    public sealed record Result(string Feature, IReadOnlyList<long> FeatureShape, int FullNodes, int ShallowNodes, int ShallowInitializers);

    /// <summary>Writes <see cref="ModelBundle.DeepCacheFullFile"/> and <see cref="ModelBundle.DeepCacheShallowFile"/> beside <c>unetDir/model.onnx</c>.</summary>
    public static async Task<Result> WriteAsync(string unetDir, int branch, SessionSettings session, CancellationToken ct)
    {
        var model = await ModelFiles.ReadAsync(Path.Combine(unetDir, "model.onnx"), ct);
        string feature = FeatureTensor(model.Graph, branch);

        var full = model.Clone();
        full.Graph.Node.Add(new NodeProto { Name = "/deepcache/Identity", OpType = "Identity", Input = { feature }, Output = { ModelBundle.DeepFeature } });
        full.Graph.Output.Add(new ValueInfoProto { Name = ModelBundle.DeepFeature, Type = FloatTensor(null) });
        string fullPath = Path.Combine(unetDir, ModelBundle.DeepCacheFullFile);
        await File.WriteAllBytesAsync(fullPath, full.ToByteArray(), ct);
        long[] shape = ProbeFeatureShape(fullPath, session);
        full.Graph.Output[^1].Type = FloatTensor(shape);
        await File.WriteAllBytesAsync(fullPath, full.ToByteArray(), ct);

        var shallow = model.Clone();
        var graph = shallow.Graph;
        foreach (var node in graph.Node)
            for (int i = 0; i < node.Input.Count; i++)
                if (node.Input[i] == feature) node.Input[i] = ModelBundle.DeepFeature;
        graph.Input.Add(new ValueInfoProto { Name = ModelBundle.DeepFeature, Type = FloatTensor(shape) });
        GraphEdits.RemoveDeadNodes(graph);
        var read = graph.Node.SelectMany(n => n.Input).ToHashSet();
        foreach (var unused in graph.Initializer.Where(t => !read.Contains(t.Name)).ToList()) graph.Initializer.Remove(unused);
        var (upBlock, _) = BranchLayer(model.Graph, branch);
        if (graph.Node.FirstOrDefault(n => ReachesDeep(n.Name, upBlock, branch / 3)) is { } deep)
            throw new InvalidOperationException($"The shallow branch still runs {deep.Name}: this UNet is not laid out like diffusers' export, so DeepCache cannot cut it at branch {branch}.");
        await File.WriteAllBytesAsync(Path.Combine(unetDir, ModelBundle.DeepCacheShallowFile), shallow.ToByteArray(), ct);
        return new Result(feature, shape, full.Graph.Node.Count, graph.Node.Count, graph.Initializer.Count);
    }

    /// <summary>The first input of the Concat that feeds the branch's resnet: the previous layer's output (the skip connection is the second).</summary>
    public static string FeatureTensor(GraphProto graph, int branch)
    {
        var (block, layer) = BranchLayer(graph, branch);
        string prefix = $"/up_blocks.{block}/resnets.{layer}/";
        var consumers = graph.Node.SelectMany(n => n.Input.Select(i => (Input: i, Node: n))).ToLookup(x => x.Input, x => x.Node);
        // Through Q/DQ pairs (an INT8 UNet quantizes the concatenation before conv_shortcut), to the resnet's own nodes.
        bool FeedsResnet(string tensor, int depth) => depth < 3 && consumers[tensor].Any(n =>
            n.Name.StartsWith(prefix, StringComparison.Ordinal) || (n.OpType is "QuantizeLinear" or "DequantizeLinear" && FeedsResnet(n.Output[0], depth + 1)));
        var concat = graph.Node.FirstOrDefault(n => n.OpType == "Concat" && n.Input.Count == 2 && !n.Name.StartsWith(prefix, StringComparison.Ordinal)
                && FeedsResnet(n.Output[0], 0))
            ?? throw new InvalidOperationException($"No Concat feeds {prefix}: DeepCache needs a UNet exported from diffusers (node names /up_blocks.N/resnets.M/…).");
        return concat.Input[0];
    }

    /// <summary>DeepCache's reversed indices (deepcache.py wrap_modules): branch → (up block, resnet) in diffusers' order.</summary>
    private static (int Block, int Layer) BranchLayer(GraphProto graph, int branch)
    {
        var layers = graph.Node.Select(n => UpResnet().Match(n.Name)).Where(m => m.Success)
            .Select(m => (Block: int.Parse(m.Groups[1].Value), Layer: int.Parse(m.Groups[2].Value))).Distinct().ToList();
        if (layers.Count == 0) throw new InvalidOperationException("The UNet graph has no /up_blocks.N/resnets.M/ nodes: DeepCache needs a UNet exported from diffusers.");
        int blocks = layers.Max(l => l.Block) + 1;
        int block = blocks - branch / 3 - 1;
        int layersInBlock = layers.Where(l => l.Block == block).Select(l => l.Layer).DefaultIfEmpty(-1).Max() + 1;
        if (branch < 0 || block < 0 || branch % 3 >= layersInBlock)
            throw new ArgumentException($"--deep-cache-branch must be from 0 to {3 * blocks - 1}; got {branch}.");
        return (block, layersInBlock - branch % 3 - 1);
    }

    /// <summary>True for a node of a part a cached step must not run: the mid block, the up blocks before the branch's, the down blocks past its depth.</summary>
    private static bool ReachesDeep(string name, int upBlock, int downBlock)
    {
        if (name.StartsWith("/mid_block/", StringComparison.Ordinal)) return true;
        var up = UpBlock().Match(name);
        if (up.Success && int.Parse(up.Groups[1].Value) < upBlock) return true;
        var down = DownBlock().Match(name);
        return down.Success && int.Parse(down.Groups[1].Value) > downBlock;
    }

    private static long[] ProbeFeatureShape(string fullPath, SessionSettings settings)
    {
        using var session = new OnnxSessionFactory(settings, NullLogger.Instance).Create("deepcache-probe", fullPath, new Dictionary<string, long>()).Session;
        var inputs = session.InputMetadata.Select(i => (i.Key, Value: ZeroTensor(i.Value))).ToList();
        try
        {
            using var runOptions = new RunOptions();
            using var outputs = session.Run(runOptions, inputs.Select(i => i.Key).ToList(), inputs.Select(i => i.Value).ToList(), [ModelBundle.DeepFeature]);
            return outputs[0].GetTensorTypeAndShape().Shape;
        }
        finally { foreach (var (_, v) in inputs) v.Dispose(); }
    }

    private static OrtValue ZeroTensor(NodeMetadata input)
    {
        long[] shape = input.Dimensions.Select(d => (long)Math.Max(d, 1)).ToArray();
        long count = shape.Aggregate(1L, (a, b) => a * b);
        return input.ElementDataType == Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int64
            ? OrtValue.CreateTensorValueFromMemory(new long[count], shape)
            : OrtValue.CreateTensorValueFromMemory(new float[count], shape);
    }

    private static TypeProto FloatTensor(long[]? shape)
    {
        var tensor = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float };
        if (shape is not null)
        {
            tensor.Shape = new TensorShapeProto();
            foreach (long d in shape) tensor.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        }
        return new TypeProto { TensorType = tensor };
    }

    [GeneratedRegex(@"^/up_blocks\.(\d+)/resnets\.(\d+)/")]
    private static partial Regex UpResnet();

    [GeneratedRegex(@"^/up_blocks\.(\d+)/")]
    private static partial Regex UpBlock();

    [GeneratedRegex(@"^/down_blocks\.(\d+)/")]
    private static partial Regex DownBlock();
}
