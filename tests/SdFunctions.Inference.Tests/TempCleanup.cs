using System.Reflection;
using Xunit.Abstractions;
using Xunit.Sdk;

[assembly: Xunit.TestFramework("SdFunctions.Inference.Tests.TempCleanupFramework", "SdFunctions.Inference.Tests")]

namespace SdFunctions.Inference.Tests;

/// <summary>
/// xUnit's own framework, plus one thing at the end of the run: the run's temp folder (tmp/sdf-tests/&lt;pid&gt;, about
/// 2.5 GB of bundle copies and optimized graphs) is deleted when every test passed and kept, for a look, when one failed.
/// </summary>
public sealed class TempCleanupFramework(IMessageSink diagnostics) : XunitTestFramework(diagnostics)
{
    protected override ITestFrameworkExecutor CreateExecutor(AssemblyName assemblyName) =>
        new Executor(assemblyName, SourceInformationProvider, DiagnosticMessageSink);

    private sealed class Executor(AssemblyName name, ISourceInformationProvider source, IMessageSink diagnostics)
        : XunitTestFrameworkExecutor(name, source, diagnostics)
    {
        protected override void RunTestCases(IEnumerable<IXunitTestCase> testCases, IMessageSink executionMessageSink, ITestFrameworkExecutionOptions executionOptions) =>
            base.RunTestCases(testCases, new CleanUpWhenFinished(executionMessageSink), executionOptions);
    }

    // Cleans up before passing the "assembly finished" message on: the runner may end the process once it has it.
    private sealed class CleanUpWhenFinished(IMessageSink next) : LongLivedMarshalByRefObject, IMessageSink
    {
        public bool OnMessage(IMessageSinkMessage message)
        {
            if (message is ITestAssemblyFinished finished) Fixtures.EndOfRun(allPassed: finished.TestsFailed == 0);
            return next.OnMessage(message);
        }
    }
}
