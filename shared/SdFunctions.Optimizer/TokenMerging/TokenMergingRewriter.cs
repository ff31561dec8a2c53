using Google.Protobuf;
using Onnx;

namespace SdFunctions.Optimizer.TokenMerging;

/// <summary>
/// Rewrites a diffusers UNet ONNX graph so each transformer block's self-attention (attn1) runs on merged
/// tokens, as tomesd's bipartite soft matching does (merge_attn, use_rand=False): one dst token per Sx×Sy
/// cell, the rest src; cosine similarity on the block's input; the r most similar src merged into their best
/// dst by mean (dst included); attn1 on the merged tokens; the result scattered back to every token.
/// The index sets are constants of the static shape; matching, merge and unmerge are ordinary ONNX ops
/// (opset 13+: no ScatterElements reduction, the mean is a one-hot matrix product).
/// </summary>
public static class TokenMergingRewriter
{
    /// <summary>What the rewrite did, block by block.</summary>
    public sealed record Result(IReadOnlyList<(string Block, int Tokens, int Merged)> Blocks);

    public static Result Apply(ModelProto model, TokenMergingOptions options)
    {
        if (options.Ratio is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(options), options.Ratio, "ratio must be in [0, 1)");
        var graph = model.Graph;
        var blocks = FindBlocks(graph);
        if (blocks.Count == 0)
            throw new InvalidOperationException("No transformer block with self-attention (…/transformer_blocks.N/attn1/to_q/MatMul) was found: not a diffusers UNet export.");
        int upBlocks = graph.Node.Select(n => UpIndex(n.Name)).Where(i => i >= 0).DefaultIfEmpty(-1).Max() + 1;
        int downBlocks = graph.Node.Select(n => DownIndex(n.Name)).Where(i => i >= 0).DefaultIfEmpty(-1).Max() + 1;

        var done = new List<(string, int, int)>();
        foreach (string prefix in blocks)
        {
            int level = prefix.StartsWith("/mid_block/", StringComparison.Ordinal) ? downBlocks - 1
                : DownIndex(prefix) is >= 0 and var d ? d : upBlocks - 1 - UpIndex(prefix);
            int downsample = 1 << level;
            if (downsample > options.MaxDownsample) continue;
            int h = (options.LatentHeight + downsample - 1) / downsample, w = (options.LatentWidth + downsample - 1) / downsample;
            int tokens = h * w, r = (int)Math.Floor(tokens * options.Ratio);
            if (r == 0) continue;
            int merged = RewriteBlock(graph, prefix, options, h, w, r, blockNumber: done.Count);
            done.Add((prefix.Trim('/'), tokens, merged));
        }
        return new Result(done);
    }

    // "/down_blocks.0/attentions.1/transformer_blocks.0/" for every block with a self-attention.
    private static List<string> FindBlocks(GraphProto graph) =>
        graph.Node.Select(n => n.Name).Where(n => n.EndsWith("/attn1/to_q/MatMul", StringComparison.Ordinal))
            .Select(n => n[..^"attn1/to_q/MatMul".Length]).Distinct().ToList();

    private static int DownIndex(string name) => BlockIndex(name, "/down_blocks.");
    private static int UpIndex(string name) => BlockIndex(name, "/up_blocks.");
    private static int BlockIndex(string name, string marker)
    {
        if (!name.StartsWith(marker, StringComparison.Ordinal)) return -1;
        int end = name.IndexOf('/', marker.Length);
        return int.TryParse(name.AsSpan(marker.Length, end - marker.Length), out int i) ? i : -1;
    }

    private static int RewriteBlock(GraphProto graph, string prefix, TokenMergingOptions o, int h, int w, int r, int blockNumber)
    {
        // The sub-layers to merge around, each found by its first node (what reads the normalized hidden states).
        var sublayers = new List<(string Prefix, string FirstNode)>();
        if (o.MergeAttn) sublayers.Add((prefix + "attn1/", prefix + "attn1/to_q/MatMul"));
        if (o.MergeCrossAttn) sublayers.Add((prefix + "attn2/", prefix + "attn2/to_q/MatMul"));
        if (o.MergeMlp) sublayers.Add((prefix + "ff/", prefix + "ff/net.0/proj/MatMul"));
        if (sublayers.Count == 0) return 0;

        var nodes = graph.Node;
        // tomesd's metric is the block's input hidden states: the residual operand of attn1's output Add.
        var (_, blockInput, _) = Residual(graph, prefix + "attn1/");
        var toQ = nodes.First(n => n.Name == prefix + "attn1/to_q/MatMul");
        var weight = graph.Initializer.FirstOrDefault(i => i.Name == toQ.Input[1])
            ?? throw new InvalidOperationException($"{prefix}attn1/to_q: its weight is not an initializer.");
        int channels = (int)weight.Dims[0];

        // Static index sets: one dst per full Sx×Sy cell (its top-left token, or a seeded random one), src = every other token.
        int hsy = h / o.Sy, wsx = w / o.Sx, tokens = h * w;
        var random = o.RandomDstSeed is { } seed ? new Random(unchecked(seed * 7919 + blockNumber)) : null; // seeded Random is stable across runs
        var isDst = new bool[tokens];
        for (int i = 0; i < hsy; i++)
            for (int j = 0; j < wsx; j++)
            {
                int k = random?.Next(o.Sx * o.Sy) ?? 0;
                isDst[(i * o.Sy + k / o.Sx) * w + j * o.Sx + k % o.Sx] = true;
            }
        long[] dstIdx = Enumerable.Range(0, tokens).Where(p => isDst[p]).Select(p => (long)p).ToArray();
        long[] srcIdx = Enumerable.Range(0, tokens).Where(p => !isDst[p]).Select(p => (long)p).ToArray();
        int nd = dstIdx.Length, ns = srcIdx.Length;
        r = Math.Min(r, ns);
        int unmerged = ns - r;
        // Where each token sits in (src ++ dst), to read the unmerged result back in token order.
        var position = new long[tokens];
        for (int k = 0; k < ns; k++) position[srcIdx[k]] = k;
        for (int j = 0; j < nd; j++) position[dstIdx[j]] = ns + j;

        var b = new GraphBuilder(graph, prefix + "tome/");
        long B = o.Batch, C = channels;
        string aIdx = b.Int64("src_idx", [ns], srcIdx), bIdx = b.Int64("dst_idx", [nd], dstIdx);

        // Matching on the normalized block input (bipartite soft matching), once for every merged sub-layer.
        string norm = b.Op("ReduceL2", [blockInput], ("axes", new long[] { -1 }), ("keepdims", 1L));
        string metric = b.Op("Div", [blockInput, norm]);
        string a = b.Op("Gather", [metric, aIdx], ("axis", 1L));
        string bm = b.Op("Gather", [metric, bIdx], ("axis", 1L));
        string scores = b.Op("MatMul", [a, b.Op("Transpose", [bm], ("perm", new long[] { 0, 2, 1 }))]);
        string nodeMax = b.Op("ReduceMax", [scores], ("axes", new long[] { 2 }), ("keepdims", 0L));
        string nodeIdx = b.Op("ArgMax", [scores], ("axis", 2L), ("keepdims", 0L));
        string order = b.OpN("TopK", [nodeMax, b.Int64("ns", [1], [ns])], 2, ("axis", 1L), ("largest", 1L), ("sorted", 1L))[1];
        string mergedSrc = b.Op("Slice", [order, b.Int64("zero", [1], [0]), b.Int64("r", [1], [r]), b.Int64("axis1", [1], [1])]);
        string keptSrc = b.Op("Slice", [order, b.Int64("r2", [1], [r]), b.Int64("ns2", [1], [ns]), b.Int64("axis1b", [1], [1])]);
        string dstOfMerged = b.Op("GatherElements", [nodeIdx, mergedSrc], ("axis", 1L));
        string keptIndex = b.Expand(b.Unsqueeze(keptSrc), [B, unmerged, C]);
        string movedIndex = b.Expand(b.Unsqueeze(mergedSrc), [B, r, C]);
        string assign = b.Op("OneHot", [dstOfMerged, b.Int64("depth", [], [nd]), b.Float("onehot_values", [2], [0f, 1f])], ("axis", -1L));
        string assignT = b.Op("Transpose", [assign], ("perm", new long[] { 0, 2, 1 }));
        string counts = b.Op("Add", [b.Op("ReduceSum", [assignT, b.Int64("axes2", [1], [2])], ("keepdims", 1L)), b.Float("one", [], [1f])]);

        // Unmerge: token p reads its own row (kept src, dst) or its dst's row (merged src).
        string rank = b.Op("ScatterElements", [b.Int64("zeros", [B, ns], new long[B * ns]), order,
            b.Int64("arange", [B, ns], Enumerable.Range(0, (int)B).SelectMany(_ => Enumerable.Range(0, ns).Select(k => (long)k)).ToArray())], ("axis", 1L));
        string isKept = b.Op("GreaterOrEqual", [rank, b.Int64("r3", [], [r])]);
        string srcRow = b.Op("Where", [isKept, b.Op("Sub", [rank, b.Int64("r4", [], [r])]), b.Op("Add", [nodeIdx, b.Int64("unm", [], [unmerged])])]);
        string dstRow = b.Int64("dst_rows", [B, nd], Enumerable.Range(0, (int)B).SelectMany(_ => Enumerable.Range(0, nd).Select(j => (long)(unmerged + j))).ToArray());
        string rows = b.Op("Gather", [b.Op("Concat", [srcRow, dstRow], ("axis", 1L)), b.Int64("token_position", [tokens], position)], ("axis", 1L));
        string rowIndex = b.Expand(b.Unsqueeze(rows), [B, tokens, C]);

        foreach (var (sublayer, firstNode) in sublayers)
        {
            var layer = nodes.Where(n => n.Name.StartsWith(sublayer, StringComparison.Ordinal)).ToList();
            string normed = (layer.FirstOrDefault(n => n.Name == firstNode)
                ?? throw new InvalidOperationException($"{firstNode} was not found: the graph differs from diffusers' export.")).Input[0];
            var (residual, _, slot) = Residual(graph, sublayer);

            // Merge what the sub-layer reads: kept src tokens, then each dst averaged with the src merged into it.
            string src = b.Op("Gather", [normed, aIdx], ("axis", 1L));
            string dst = b.Op("Gather", [normed, bIdx], ("axis", 1L));
            string kept = b.Op("GatherElements", [src, keptIndex], ("axis", 1L));
            string moved = b.Op("GatherElements", [src, movedIndex], ("axis", 1L));
            string mean = b.Op("Div", [b.Op("Add", [dst, b.Op("MatMul", [assignT, moved])]), counts]);
            string mergedTokens = b.Op("Concat", [kept, mean], ("axis", 1L));
            string unmergedOut = b.Op("GatherElements", [residual.Input[slot], rowIndex], ("axis", 1L));

            foreach (var n in layer)
                for (int i = 0; i < n.Input.Count; i++)
                    if (n.Input[i] == normed) n.Input[i] = mergedTokens;
            residual.Input[slot] = unmergedOut;
        }
        nodes.AddRange(b.Nodes);
        GraphEdits.SortTopologically(graph);
        return r;
    }

    /// <summary>The residual Add a sub-layer's one output feeds: the Add, its other operand, and which input the output is.</summary>
    private static (NodeProto Add, string Other, int Slot) Residual(GraphProto graph, string sublayer)
    {
        var produced = graph.Node.Where(n => n.Name.StartsWith(sublayer, StringComparison.Ordinal)).SelectMany(n => n.Output).ToHashSet();
        var uses = graph.Node.Where(n => !n.Name.StartsWith(sublayer, StringComparison.Ordinal))
            .SelectMany(n => n.Input.Select((input, slot) => (Node: n, Input: input, Slot: slot))).Where(u => produced.Contains(u.Input)).ToList();
        if (uses.Select(u => u.Input).Distinct().Count() != 1 || uses.Count != 1 || uses[0].Node.OpType != "Add")
            throw new InvalidOperationException($"{sublayer}: expected one output feeding the residual Add; the graph differs from diffusers' export.");
        return (uses[0].Node, uses[0].Node.Input[1 - uses[0].Slot], uses[0].Slot);
    }
}
