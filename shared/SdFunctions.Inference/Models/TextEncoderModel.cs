using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Onnx;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Models;

/// <summary>CLIP text encoder, batch 1 × sequence length: token ids → last_hidden_state.</summary>
public sealed class TextEncoderModel : IDisposable
{
    private readonly InferenceSession _session;
    private readonly bool _int64Ids;
    private readonly int[] _ids32 = [];
    private readonly long[] _ids64 = [];
    private readonly float[] _hidden;
    private readonly OrtValue _idsValue, _hiddenValue;
    private readonly string[] _inputNames, _outputNames;

    public int SequenceLength { get; }
    public int HiddenSize { get; }
    public SessionLoadInfo LoadInfo { get; }

    public TextEncoderModel(OnnxSessionFactory factory, ModelBundle bundle, int sequenceLength)
    {
        var model = bundle.TextEncoder;
        var output = ModelBundle.MainOutput(model, "last_hidden_state");
        SequenceLength = sequenceLength;
        HiddenSize = (int)(StaticShapes.FixedDim(output, 2) ?? throw new ModelBundleException(
            $"{model.Path}: output '{output.Name}' does not declare its hidden size (dim 2); expected a fixed size such as 768."));

        var overrides = new Dictionary<string, long>();
        StaticShapes.Bind(model, "input_ids", [1, sequenceLength], overrides);
        (_session, LoadInfo) = factory.Create("text_encoder", model.Path, overrides);

        _int64Ids = model.FindInput("input_ids")!.ElementType == OnnxElementType.Int64;
        long[] idsShape = [1, sequenceLength];
        if (_int64Ids) { _ids64 = new long[sequenceLength]; _idsValue = OrtValue.CreateTensorValueFromMemory(_ids64, idsShape); }
        else { _ids32 = new int[sequenceLength]; _idsValue = OrtValue.CreateTensorValueFromMemory(_ids32, idsShape); }
        _hidden = new float[sequenceLength * HiddenSize];
        _hiddenValue = OrtValue.CreateTensorValueFromMemory(_hidden, [1, sequenceLength, HiddenSize]);
        _inputNames = ["input_ids"];
        _outputNames = [output.Name];
    }

    /// <summary>Encodes one prompt's ids into a new [sequence, hidden] array. Not thread-safe: the pipeline serializes calls.</summary>
    public float[] Encode(ReadOnlySpan<int> ids, RunOptions runOptions)
    {
        if (ids.Length != SequenceLength) throw new ArgumentException($"expected {SequenceLength} ids, got {ids.Length}", nameof(ids));
        if (_int64Ids) for (int i = 0; i < ids.Length; i++) _ids64[i] = ids[i];
        else ids.CopyTo(_ids32);
        _session.Run(runOptions, _inputNames, [_idsValue], _outputNames, [_hiddenValue]);
        return (float[])_hidden.Clone();
    }

    public void Dispose()
    {
        _idsValue.Dispose();
        _hiddenValue.Dispose();
        _session.Dispose();
    }
}
