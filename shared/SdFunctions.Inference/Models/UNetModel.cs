using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Onnx;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Models;

/// <summary>
/// The denoising UNet at one static shape (batch × 4 × h × w latents, 77 × hidden text states). The
/// input and output buffers are allocated once and pinned; each step writes into them and runs.
/// The timestep input is int64 (optimum) or float32 (the older diffusers exporter), of shape [1] or [batch].
/// Guidance-distilled UNets (LCM) also take <c>timestep_cond</c> [batch, time_cond_proj_dim].
/// A bundle cut for DeepCache loads its full graph (which also writes <see cref="DeepFeature"/>) in place of model.onnx,
/// and its shallow graph beside it, both over the same buffers: <see cref="RunShallow"/> reads the feature the last
/// <see cref="Run"/> wrote.
/// </summary>
public sealed class UNetModel : IDisposable
{
    private readonly InferenceSession _session;
    private readonly long[] _timestep64 = [];
    private readonly float[] _timestep32 = [];
    private readonly OrtValue[] _inputs;
    private readonly OrtValue[] _outputs;
    private readonly string[] _inputNames;
    private readonly string[] _outputNames;
    private readonly InferenceSession? _shallow;
    private readonly OrtValue[] _shallowInputs = [];
    private readonly string[] _shallowInputNames = [];
    private readonly string[] _shallowOutputNames = [];
    private readonly OrtValue[] _shallowOutputs = [];

    public int Batch { get; }
    public bool IntegerTimestep { get; }
    public float[] Sample { get; }
    public float[] EncoderHiddenStates { get; }

    /// <summary>[batch, <see cref="TimestepCondDim"/>] for a guidance-distilled UNet; empty otherwise.</summary>
    public float[] TimestepCond { get; } = [];
    public int TimestepCondDim { get; }
    public float[] Output { get; }

    /// <summary>DeepCache's reused feature (written by <see cref="Run"/>, read by <see cref="RunShallow"/>); empty without DeepCache.</summary>
    public float[] DeepFeature { get; } = [];
    public bool HasDeepCache => _shallow is not null;
    public SessionLoadInfo? ShallowLoadInfo { get; }
    public SessionLoadInfo LoadInfo { get; }

    public UNetModel(OnnxSessionFactory factory, ModelBundle bundle, int batch, int latentHeight, int latentWidth, int sequenceLength, int hiddenSize)
    {
        var model = bundle.Unet;
        Batch = batch;
        var sampleInfo = model.FindInput("sample")!;
        int channels = (int)(StaticShapes.FixedDim(sampleInfo, 1) ?? 4);
        long[] sampleShape = [batch, channels, latentHeight, latentWidth];
        long[] hiddenShape = [batch, sequenceLength, hiddenSize];

        var overrides = new Dictionary<string, long>();
        StaticShapes.Bind(model, "sample", sampleShape, overrides);
        StaticShapes.Bind(model, "encoder_hidden_states", hiddenShape, overrides);
        long[] timestepShape = StaticShapes.Resolve(model, "timestep", overrides);
        StaticShapes.Bind(model, "timestep", timestepShape, overrides);
        TimestepCondDim = bundle.UnetTimestepCondDim ?? 0;
        long[] condShape = [batch, TimestepCondDim];
        if (TimestepCondDim > 0) StaticShapes.Bind(model, ModelBundle.UNetTimestepCond, condShape, overrides);
        var deepCache = bundle.DeepCache;
        (_session, LoadInfo) = deepCache is null
            ? factory.Create("unet", model.Path, overrides)
            : factory.Create("unet-deepcache-full", deepCache.Full.Path, overrides);

        IntegerTimestep = model.FindInput("timestep")!.ElementType == OnnxElementType.Int64;
        int timestepLength = (int)timestepShape.Aggregate(1L, (a, b) => a * b);
        Sample = new float[batch * channels * latentHeight * latentWidth];
        EncoderHiddenStates = new float[batch * sequenceLength * hiddenSize];
        Output = new float[Sample.Length];
        OrtValue timestepValue;
        if (IntegerTimestep) { _timestep64 = new long[timestepLength]; timestepValue = OrtValue.CreateTensorValueFromMemory(_timestep64, timestepShape); }
        else { _timestep32 = new float[timestepLength]; timestepValue = OrtValue.CreateTensorValueFromMemory(_timestep32, timestepShape); }
        List<string> names = ["sample", "timestep", "encoder_hidden_states"];
        List<OrtValue> inputs =
        [
            OrtValue.CreateTensorValueFromMemory(Sample, sampleShape),
            timestepValue,
            OrtValue.CreateTensorValueFromMemory(EncoderHiddenStates, hiddenShape),
        ];
        if (TimestepCondDim > 0)
        {
            TimestepCond = new float[batch * TimestepCondDim];
            names.Add(ModelBundle.UNetTimestepCond);
            inputs.Add(OrtValue.CreateTensorValueFromMemory(TimestepCond, condShape));
        }
        _inputNames = [.. names];
        _inputs = [.. inputs];
        _outputs = [OrtValue.CreateTensorValueFromMemory(Output, sampleShape)];
        _outputNames = [ModelBundle.MainOutput(model, "out_sample").Name];
        if (deepCache is null) return;

        long[] featureShape = [.. deepCache.FeatureShape];
        if (featureShape[0] != batch)
            throw new ModelBundleException($"{deepCache.Full.Path}: its {ModelBundle.DeepFeature} has batch {featureShape[0]}, the UNet runs batch {batch}.");
        DeepFeature = new float[featureShape.Aggregate(1L, (a, b) => a * b)];
        var feature = OrtValue.CreateTensorValueFromMemory(DeepFeature, featureShape);
        _outputNames = [.. _outputNames, ModelBundle.DeepFeature];
        _outputs = [.. _outputs, feature];
        (_shallow, var shallowInfo) = factory.Create("unet-deepcache-shallow", deepCache.Shallow.Path, overrides);
        ShallowLoadInfo = shallowInfo;
        _shallowInputNames = [.. names, ModelBundle.DeepFeature];
        _shallowInputs = [.. inputs, feature];
        _shallowOutputs = [_outputs[0]];
        _shallowOutputNames = [_outputNames[0]];
    }

    /// <summary>Runs on the current inputs (<see cref="Sample"/>, <see cref="EncoderHiddenStates"/>, <see cref="TimestepCond"/>), writing <see cref="Output"/>.</summary>
    public void Run(double timestep, RunOptions runOptions)
    {
        SetTimestep(timestep);
        _session.Run(runOptions, _inputNames, _inputs, _outputNames, _outputs);
    }

    /// <summary>A DeepCache cached step: only the shallow branch, on the current inputs and <see cref="DeepFeature"/>.</summary>
    public void RunShallow(double timestep, RunOptions runOptions)
    {
        if (_shallow is null) throw new InvalidOperationException("This UNet has no DeepCache graphs (sdf optimize --deep-cache).");
        SetTimestep(timestep);
        _shallow.Run(runOptions, _shallowInputNames, _shallowInputs, _shallowOutputNames, _shallowOutputs);
    }

    // An int64 UNet gets the timestep truncated, as numpy's cast in diffusers' ONNX pipeline does.
    private void SetTimestep(double timestep)
    {
        if (IntegerTimestep) Array.Fill(_timestep64, (long)timestep);
        else Array.Fill(_timestep32, (float)timestep);
    }

    public void Dispose()
    {
        foreach (var v in _inputs) v.Dispose();
        foreach (var v in _outputs) v.Dispose();
        _session.Dispose();
        _shallow?.Dispose();
    }
}
