using Microsoft.Azure.Functions.Worker;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// Stands in for the Functions host's invocation context (the host cannot run here): it carries only the
/// queue trigger's binding data, as the host fills it ("DequeueCount" arrives as text).
/// </summary>
internal sealed class QueueContext(IReadOnlyDictionary<string, object?> bindingData) : FunctionContext
{
    public static QueueContext Delivery(long dequeueCount) => new(new Dictionary<string, object?> { ["DequeueCount"] = dequeueCount.ToString() });

    public override BindingContext BindingContext { get; } = new Binding(bindingData);
    public override string InvocationId => "test";
    public override string FunctionId => "test";
    public override TraceContext TraceContext => throw new NotSupportedException();
    public override RetryContext RetryContext => throw new NotSupportedException();
    public override IServiceProvider InstanceServices { get; set; } = null!;
    public override FunctionDefinition FunctionDefinition => throw new NotSupportedException();
    public override IDictionary<object, object> Items { get; set; } = new Dictionary<object, object>();
    public override IInvocationFeatures Features => throw new NotSupportedException();

    private sealed class Binding(IReadOnlyDictionary<string, object?> data) : BindingContext
    {
        public override IReadOnlyDictionary<string, object?> BindingData => data;
    }
}
