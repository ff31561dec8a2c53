using Google.Protobuf;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Optimizer.Quantization;

/// <summary>One UNet call seen during calibration.</summary>
public sealed record UNetInputs(float[] Sample, double Timestep, float[] EncoderHiddenStates, float[] TimestepCond);

/// <summary>What the float pipeline fed its models during calibration: every UNet call, and each VAE decoder input.</summary>
public sealed record CalibrationInputs(IReadOnlyList<UNetInputs> UNet, IReadOnlyList<float[]> DecoderLatents);

/// <summary>
/// Calibration for static quantization: real UNet inputs from the float pipeline (prompts × the scheduler's
/// timesteps), then the min and max of every activation to quantize over all of them.
/// </summary>
public static class Calibration
{
    /// <summary>Used when no prompt file is given: varied subjects and styles, so ranges are not tuned to one image.</summary>
    public static readonly IReadOnlyList<string> DefaultPrompts =
    [
        "a photo of an astronaut riding a horse on mars",
        "a watercolor painting of a lighthouse at sunset",
        "portrait of an old fisherman, dramatic lighting, highly detailed",
        "a bowl of fruit on a wooden table, still life, oil on canvas",
    ];

    /// <summary>Prompts from a text file: one per line; blank lines and lines starting with # are skipped.</summary>
    public static IReadOnlyList<string> ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new ArgumentException($"--calibration: {path} does not exist.");
        var prompts = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        return prompts.Count > 0 ? prompts : throw new ArgumentException($"--calibration: {path} holds no prompt (one per line).");
    }

    /// <summary>Runs the float pipeline of <paramref name="bundleDirectory"/> once per prompt and keeps every model input.</summary>
    /// <param name="width">The image size to run at (null: the bundle's own, which an optimized UNet fixes).</param>
    public static async Task<CalibrationInputs> CollectInputsAsync(string bundleDirectory, IReadOnlyList<string> prompts, int steps, int batch,
        SessionSettings session, IProgress<string>? progress, CancellationToken ct, int? width = null, int? height = null)
    {
        var recorder = new Recorder();
        var decoderLatents = new List<float[]>();
        using var pipeline = await StableDiffusionPipeline.LoadAsync(bundleDirectory,
            new PipelineOptions { Session = session, WarmUp = false, Width = width, Height = height }, cancellationToken: ct);
        for (int i = 0; i < prompts.Count; i++)
        {
            progress?.Report($"calibration: prompt {i + 1}/{prompts.Count} × {steps} steps");
            var request = RequestFor(prompts[i], steps, batch, pipeline.Bundle.GuidanceDistilled) with { Seed = i };
            var result = await pipeline.GenerateAsync(request, progress: null, recorder, ct);
            decoderLatents.Add([.. result.Latents.Select(v => v / pipeline.Bundle.VaeScalingFactor)]); // what the full decoder is fed
        }
        return new CalibrationInputs(recorder.Inputs, decoderLatents);
    }

    /// <summary>
    /// What a calibration run asks for. Batch 2: the model's own guidance (SD's 7.5, or its card's), with negative and prompt halves;
    /// batch 1: guidance off, or a guidance-distilled UNet's embedded default.
    /// </summary>
    public static GenerationRequest RequestFor(string prompt, int steps, int batch, bool guidanceDistilled) =>
        new() { Prompt = prompt, Steps = steps, GuidanceScale = batch == 2 || guidanceDistilled ? null : 1.0 };

    /// <summary>The prompts to calibrate on when no file is given: the model card's examples (its own domain), else <see cref="DefaultPrompts"/>.</summary>
    public static IReadOnlyList<string> DefaultPromptsFor(ModelBundle bundle) => bundle.Card?.ExamplePrompts is { Count: > 0 } examples ? examples : DefaultPrompts;

    /// <summary>The range of each of the UNet's <paramref name="tensors"/> over all <paramref name="inputs"/>.</summary>
    /// <param name="percentile">Null: min-max; else each run's percentile at both ends (see <see cref="RangeMethod.Percentile"/>).</param>
    public static Dictionary<string, ActivationRange> MeasureRanges(ModelProto model, string modelDirectory, IReadOnlyList<string> tensors,
        IReadOnlyList<UNetInputs> inputs, SessionSettings session, IProgress<string>? progress, CancellationToken ct, double? percentile = null) =>
        MeasureRanges(model, modelDirectory, tensors, inputs.Count, i => UNetFeeds(model.Graph, inputs[i]), session, progress, ct, percentile);

    /// <summary>
    /// The range of each of <paramref name="tensors"/> over <paramref name="count"/> runs of <paramref name="model"/> (any model:
    /// <paramref name="feeds"/> gives run i's named inputs, disposed after the run), measured inside ONNX Runtime.
    /// </summary>
    public static Dictionary<string, ActivationRange> MeasureRanges(ModelProto model, string modelDirectory, IReadOnlyList<string> tensors,
        int count, Func<int, IReadOnlyList<(string Name, OrtValue Value)>> feeds, SessionSettings session, IProgress<string>? progress, CancellationToken ct,
        double? percentile = null)
    {
        // Each tensor gets ReduceMin/ReduceMax nodes (or its percentiles, below) whose scalars become extra graph outputs: only 8 bytes per
        // tensor leave the run.
        var augmented = model.Clone();
        var b = new GraphBuilder(augmented.Graph, "/calibration/");
        var outputs = new List<(string Tensor, string Min, string Max)>();
        foreach (string tensor in tensors)
        {
            var (min, max) = percentile is { } p ? Percentiles(b, tensor, p)
                : (b.Op("ReduceMin", [tensor], ("keepdims", 0L)), b.Op("ReduceMax", [tensor], ("keepdims", 0L)));
            foreach (string o in new[] { min, max })
                augmented.Graph.Output.Add(new ValueInfoProto
                {
                    Name = o,
                    Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = new TensorShapeProto() } },
                });
            outputs.Add((tensor, min, max));
        }
        augmented.Graph.Node.AddRange(b.Nodes);

        string path = Path.Combine(modelDirectory, $"calibration-{Guid.NewGuid():N}.onnx"); // beside the weights it refers to
        File.WriteAllBytes(path, augmented.ToByteArray());
        try
        {
            var factory = new OnnxSessionFactory(session, NullLogger.Instance);
            using var created = factory.Create("calibration", path, new Dictionary<string, long>()).Session;
            var ranges = tensors.ToDictionary(t => t, _ => new ActivationRange(float.PositiveInfinity, float.NegativeInfinity));
            string[] names = [.. outputs.SelectMany(o => new[] { o.Min, o.Max })];
            using var runOptions = new RunOptions();
            for (int i = 0; i < count; i++)
            {
                ct.ThrowIfCancellationRequested();
                if (i % 10 == 0) progress?.Report($"calibration: measuring ranges, input {i + 1}/{count}");
                var inputs = feeds(i);
                using var disposer = new DisposableList(inputs.Select(f => f.Value));
                using var results = created.Run(runOptions, inputs.Select(f => f.Name).ToList(), inputs.Select(f => f.Value).ToList(), names);
                for (int k = 0; k < outputs.Count; k++)
                {
                    float min = results[2 * k].GetTensorDataAsSpan<float>()[0], max = results[2 * k + 1].GetTensorDataAsSpan<float>()[0];
                    ranges[outputs[k].Tensor] = ranges[outputs[k].Tensor].Include(min, max);
                }
            }
            return ranges;
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// The tensor's p-th percentile at both ends, inside the graph: k = ⌈N · (100 − p) / 200⌉ values are cut from each end with TopK
    /// (so a run's k − 1 most extreme values fall outside the range).
    /// </summary>
    private static (string Min, string Max) Percentiles(GraphBuilder b, string tensor, double p)
    {
        string flat = b.Op("Reshape", [tensor, b.Int64("flat", [1], [-1])]);
        string size = b.Op("Cast", [b.Op("Size", [tensor])], ("to", (long)TensorProto.Types.DataType.Float));
        string share = b.Float("tail_share", [], [(float)((100 - p) / 200)]);
        string k = b.Op("Cast", [b.Op("Ceil", [b.Op("Mul", [size, share])])], ("to", (long)TensorProto.Types.DataType.Int64));
        k = b.Op("Reshape", [b.Op("Max", [k, b.Int64("one", [], [1])]), b.Int64("k_shape", [1], [1])]);
        string top = b.OpN("TopK", [flat, k], 2, ("largest", 1L))[0], bottom = b.OpN("TopK", [flat, k], 2, ("largest", 0L))[0];
        return (b.Op("ReduceMax", [bottom], ("keepdims", 0L)), b.Op("ReduceMin", [top], ("keepdims", 0L)));
    }

    internal static List<(string, OrtValue)> UNetFeeds(GraphProto graph, UNetInputs input)
    {
        long[] Shape(string name) => [.. graph.Input.First(i => i.Name == name).Type.TensorType.Shape.Dim.Select(d => d.DimValue)];
        long[] timestepShape = Shape("timestep");
        int timesteps = (int)timestepShape.Aggregate(1L, (x, y) => x * y);
        bool int64 = graph.Input.First(i => i.Name == "timestep").Type.TensorType.ElemType == (int)TensorProto.Types.DataType.Int64;
        List<(string, OrtValue)> feeds =
        [
            ("sample", OrtValue.CreateTensorValueFromMemory(input.Sample, Shape("sample"))),
            ("timestep", int64 ? OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat((long)input.Timestep, timesteps).ToArray(), timestepShape)
                  : OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat((float)input.Timestep, timesteps).ToArray(), timestepShape)),
            ("encoder_hidden_states", OrtValue.CreateTensorValueFromMemory(input.EncoderHiddenStates, Shape("encoder_hidden_states"))),
        ];
        if (graph.Input.Any(i => i.Name == ModelBundle.UNetTimestepCond))
            feeds.Add((ModelBundle.UNetTimestepCond, OrtValue.CreateTensorValueFromMemory(input.TimestepCond, Shape(ModelBundle.UNetTimestepCond))));
        return feeds;
    }

    private sealed class DisposableList(IEnumerable<OrtValue> values) : IDisposable
    {
        public void Dispose() { foreach (var v in values) v.Dispose(); }
    }

    private sealed class Recorder : IUNetInputObserver
    {
        public List<UNetInputs> Inputs { get; } = [];
        public void Observe(ReadOnlySpan<float> sample, double timestep, ReadOnlySpan<float> encoderHiddenStates, ReadOnlySpan<float> timestepCond) =>
            Inputs.Add(new UNetInputs(sample.ToArray(), timestep, encoderHiddenStates.ToArray(), timestepCond.ToArray()));
    }
}
