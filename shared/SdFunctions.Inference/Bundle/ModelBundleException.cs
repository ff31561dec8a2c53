namespace SdFunctions.Inference.Bundle;

/// <summary>A model bundle that cannot be used: the message names the file and what was expected.</summary>
public sealed class ModelBundleException(string message, Exception? inner = null) : Exception(message, inner);
