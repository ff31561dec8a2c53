using Onnx;

namespace SdFunctions.Optimizer;

/// <summary>Whole-graph housekeeping after a rewrite: dead nodes out, nodes back in topological order.</summary>
internal static class GraphEdits
{
    /// <summary>Drops nodes whose outputs nothing reads (repeatedly: their inputs' producers may die too).</summary>
    public static void RemoveDeadNodes(GraphProto graph)
    {
        var graphOutputs = graph.Output.Select(o => o.Name).ToHashSet();
        while (true)
        {
            var read = graph.Node.SelectMany(n => n.Input).Concat(graphOutputs).ToHashSet();
            var dead = graph.Node.Where(n => n.Output.All(o => !read.Contains(o))).ToList();
            if (dead.Count == 0) return;
            foreach (var n in dead) graph.Node.Remove(n);
        }
    }

    /// <summary>
    /// Orders nodes so each comes after the producers of its inputs (ONNX requires it), keeping the existing order
    /// wherever it is already valid: inserted nodes can be appended anywhere and sorted once.
    /// </summary>
    public static void SortTopologically(GraphProto graph)
    {
        var nodes = graph.Node.ToList();
        var producer = new Dictionary<string, int>();
        for (int i = 0; i < nodes.Count; i++) foreach (string o in nodes[i].Output) producer[o] = i;
        var state = new byte[nodes.Count]; // 0 new, 1 on the stack, 2 placed
        var sorted = new List<NodeProto>(nodes.Count);
        var stack = new Stack<(int Node, int NextInput)>();
        for (int root = 0; root < nodes.Count; root++)
        {
            if (state[root] != 0) continue;
            stack.Push((root, 0));
            state[root] = 1;
            while (stack.Count > 0)
            {
                var (n, next) = stack.Pop();
                var inputs = nodes[n].Input;
                if (next < inputs.Count)
                {
                    stack.Push((n, next + 1));
                    if (producer.TryGetValue(inputs[next], out int p))
                    {
                        if (state[p] == 1) throw new InvalidOperationException($"The graph has a cycle through {nodes[p].Name}.");
                        if (state[p] == 0) { state[p] = 1; stack.Push((p, 0)); }
                    }
                    continue;
                }
                state[n] = 2;
                sorted.Add(nodes[n]);
            }
        }
        graph.Node.Clear();
        graph.Node.AddRange(sorted);
    }
}
